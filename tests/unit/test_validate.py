"""Identifiers that reach paths, branches and processes: fuzzed with hypothesis."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from conveyor import validate
from conveyor.errors import InvalidField

SHELL_META = ";|&$`<>(){}*?!~'\"\\"
FUZZ = settings(max_examples=200, deadline=None)

valid_ids = st.from_regex(r"[A-Z][A-Z0-9]{0,15}-[1-9][0-9]{0,8}", fullmatch=True)
valid_repos = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,63}", fullmatch=True)
bad_chars = st.one_of(
    st.sampled_from(
        [
            *SHELL_META,
            "/",
            ".",
            " ",
            "\t",
            "\n",
            "\r",
            "\x00",
            "\x1b",
            "\x7f",
            "\u00a0",
            "\u2028",
            "\u200b",
        ]
    ),
    st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]),
)


def unsafe(value: str) -> bool:
    """True if `value` could escape a directory, a git argument or a shell word."""
    return (
        ".." in value
        or "/" in value
        or any(ch in SHELL_META for ch in value)
        or any(ch.isspace() for ch in value)
        or any(unicodedata.category(ch).startswith(("C", "Z")) for ch in value)
    )


def refuses(check: Callable[[object], object], value: object) -> bool:
    try:
        check(value)
    except InvalidField:
        return True
    return False


def inject(value: str, bad: str, where: int) -> str:
    at = where % (len(value) + 1)
    return value[:at] + bad + value[at:]


# --- work item ids ---------------------------------------------------------------------------


@FUZZ
@given(value=valid_ids)
def test_well_formed_work_item_ids_are_accepted(value: str):
    assert validate.work_item_id(value) == value
    assert not unsafe(value)


@FUZZ
@given(value=valid_ids, bad=bad_chars, where=st.integers(min_value=0))
def test_a_work_item_id_with_an_unsafe_character_is_refused(value: str, bad: str, where: int):
    assert refuses(validate.work_item_id, inject(value, bad, where))


@FUZZ
@given(value=st.text(max_size=30))
def test_any_accepted_work_item_id_is_safe(value: str):
    if not refuses(validate.work_item_id, value):
        assert not unsafe(value)


@pytest.mark.parametrize(
    "value",
    [
        "DEMO-0",
        "demo-1",
        "DEMO-01",
        "DEMO_1",
        "-1",
        "DEMO-",
        "1DEMO-1",
        "DEMO-1\n",
        " DEMO-1",
        "DEMO-1/../x",
        "DEMO-1;id",
        "DEMO-1234567890",
        7,
        None,
        b"DEMO-1",
    ],
)
def test_malformed_work_item_ids_are_refused_naming_the_field(value: object):
    with pytest.raises(InvalidField) as info:
        validate.work_item_id(value, "item.id")
    assert info.value.field == "item.id"
    assert str(info.value).startswith("item.id: ")


# --- repository names and prefixes -----------------------------------------------------------


@FUZZ
@given(value=valid_repos)
def test_well_formed_repository_names_are_accepted(value: str):
    assert validate.repo_name(value) == value
    assert not unsafe(value)


@FUZZ
@given(value=valid_repos, bad=bad_chars, where=st.integers(min_value=0))
def test_a_repository_name_with_an_unsafe_character_is_refused(value: str, bad: str, where: int):
    assert refuses(validate.repo_name, inject(value, bad, where))


@FUZZ
@given(value=st.text(max_size=30))
def test_any_accepted_repository_name_is_safe(value: str):
    if not refuses(validate.repo_name, value):
        assert not unsafe(value)
        assert not value.startswith("-")


@pytest.mark.parametrize("value", ["", ".", "..", "-rf", "_x", "Web", "a.b", "a/b", "x" * 65])
def test_malformed_repository_names_are_refused(value: str):
    assert refuses(validate.repo_name, value)


@pytest.mark.parametrize("value", ["", "demo", "1A", "A-B", "A" * 17, "Ä"])
def test_malformed_prefixes_are_refused(value: str):
    assert refuses(validate.prefix, value)


# --- slugs and branches ----------------------------------------------------------------------

SLUG_RE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@FUZZ
@given(text=st.text())
def test_a_slug_of_any_text_is_short_lowercase_and_single_hyphenated(text: str):
    value = validate.slug(text)
    assert 1 <= len(value) <= validate.MAX_SLUG
    assert SLUG_RE.fullmatch(value), value
    assert not unsafe(value)


@FUZZ
@given(
    words=st.lists(st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), min_size=1, max_size=10),
    separator=st.sampled_from([" ", "  ", "-", "_", " / ", "; ", "..", "\t"]),
)
def test_a_slug_keeps_whole_words_in_order(words: list[str], separator: str):
    value = validate.slug(separator.join(words))
    kept = value.split("-")
    assert kept == words[: len(kept)]
    if len(kept) < len(words):
        assert len(value) + 1 + len(words[len(kept)]) > validate.MAX_SLUG


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Add login page", "add-login-page"),
        ("  --Fix: crash on ../../etc/passwd; rm -rf / --  ", "fix-crash-on-etc-passwd-rm-rf"),
        ("Übergröße prüfen", "ubergroe-prufen"),
        ("", "item"),
        ("!!!", "item"),
        ("日本語のタイトル", "item"),
        ("x" * 41, "item"),
    ],
)
def test_slug_examples(text: str, expected: str):
    assert validate.slug(text) == expected


@FUZZ
@given(item_id=valid_ids, item_title=st.text())
def test_branch_for_a_valid_id_and_any_title_is_a_valid_branch(item_id: str, item_title: str):
    value = validate.branch_for(item_id, item_title)
    assert validate.branch(value) == value
    assert value == f"feature/{item_id}-{validate.slug(item_title)}"
    assert value.startswith("feature/")
    assert not unsafe(value.removeprefix("feature/"))


@FUZZ
@given(item_id=st.text(max_size=20), item_title=st.text(max_size=20))
def test_branch_for_never_accepts_an_invalid_id(item_id: str, item_title: str):
    assume(refuses(validate.work_item_id, item_id))
    assert refuses(lambda i: validate.branch_for(i, item_title), item_id)


@FUZZ
@given(value=st.text(max_size=60))
def test_any_accepted_branch_is_a_safe_feature_branch(value: str):
    if not refuses(validate.branch, value):
        assert value.startswith("feature/")
        assert not unsafe(value.removeprefix("feature/"))


@pytest.mark.parametrize(
    "value",
    [
        "main",
        "feature/DEMO-1",
        "feature/DEMO-1-",
        "feature/demo-1-x",
        "feature/DEMO-1-a--b",
        "feature/DEMO-1-a/b",
        "feature/DEMO-1-a..b",
        "refs/heads/feature/DEMO-1-x",
        "feature/DEMO-1-x\n",
        "--upload-pack=evil",
    ],
)
def test_malformed_branches_are_refused(value: str):
    assert refuses(validate.branch, value)


# --- titles and descriptions -----------------------------------------------------------------

printable = st.text(st.characters(categories=["L", "N", "P", "S"]), min_size=1, max_size=60)


@FUZZ
@given(text=printable, padding=st.sampled_from(["", " ", "  \t", "\n"]))
def test_a_printable_title_is_accepted_and_stripped(text: str, padding: str):
    assert validate.title(padding + text + padding) == text


@FUZZ
@given(
    head=printable,
    tail=printable,
    bad=st.one_of(
        st.characters(categories=["Cc", "Cf"]),
        st.sampled_from(["\n", "\r", "\t", "\x00", "\x1b", "\x85", "\u200e"]),
    ),
)
def test_a_title_with_a_control_character_or_newline_inside_is_refused(
    head: str, tail: str, bad: str
):
    assert refuses(validate.title, head + bad + tail)


def test_a_title_with_a_unicode_line_separator_is_refused():
    assert refuses(validate.title, "Add login\u2028Injected: line")
    assert refuses(validate.title, "Add login\u2029Injected: line")


@FUZZ
@given(text=st.text(max_size=250))
def test_any_accepted_title_is_one_line_without_control_characters(text: str):
    if refuses(validate.title, text):
        return
    value = validate.title(text)
    assert 1 <= len(value) <= validate.MAX_TITLE
    assert value == value.strip()
    assert not any(unicodedata.category(ch) in ("Cc", "Cf") for ch in value)


@pytest.mark.parametrize("value", ["", "   ", "\n\t", "x" * 201, None, 42, ["a"]])
def test_empty_overlong_or_non_string_titles_are_refused(value: object):
    assert refuses(validate.title, value)


def test_descriptions_keep_newlines_and_tabs_but_refuse_other_control_characters():
    text = "Steps:\n\t1. log in\n\t2. see the page\n"
    assert validate.description(text) == text
    assert refuses(validate.description, "bell\x07")
    assert refuses(validate.description, "escape \x1b[31mred")
    assert refuses(validate.description, "x" * (validate.MAX_DESCRIPTION + 1))
    assert refuses(validate.description, None)
