"""Config loading: embedded defaults, unknown keys, wrong types, env overlay, cross-field rules."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor import config
from conveyor.errors import ConfigError, InvalidField

SPEC_PIPELINE = [
    # name, role, gate, on_fail, human approval, merge step
    ("analysis", "analyst", "analysis_complete", "retry", True, False),
    ("architecture", "architect", "architecture_done", "retry", False, False),
    ("development", "developer", "ci_green", "retry", False, False),
    ("review", "reviewer", "review_approved", "development", False, False),
    ("testing", "tester", "tests_passed", "development", False, False),
    ("deploy-staging", "deployer", "staging_status", "retry", False, True),
    ("deploy", "deployer", "deploy_status", "development", False, False),
]


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Config:
    return config.load(write(tmp_path, text), env=env or {})


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return str(info.value)


def stages_toml(*stages: dict[str, object]) -> str:
    out = []
    for stage in stages:
        stage = {"role": "developer", **stage}
        out.append("[[pipeline.stages]]")
        for key, value in stage.items():
            rendered = f'"{value}"' if isinstance(value, str) else str(value).lower()
            out.append(f"{key} = {rendered}")
    return "\n".join(out) + "\n"


def repos_toml(*repos: tuple[str, str]) -> str:
    return "".join(f'[[repos]]\nname = "{name}"\nprefix = "{prefix}"\n' for name, prefix in repos)


# --- embedded defaults -----------------------------------------------------------------------


def test_embedded_defaults_reproduce_the_spec_pipeline():
    cfg = config.load(env={})
    assert [
        (s.name, s.role, s.gate, s.on_fail, s.human_approval, s.merge) for s in cfg.pipeline.stages
    ] == SPEC_PIPELINE
    assert (cfg.pipeline.max_developer_retries, cfg.pipeline.max_stage_retries) == (3, 3)


def test_embedded_defaults_run_everything_locally_with_the_demo_repository():
    cfg = config.load(env={})
    assert cfg.nats.url == ""
    assert (cfg.forge.kind, cfg.tracker.kind) == ("local", "local")
    assert [(r.name, r.prefix, r.template) for r in cfg.repos] == [("demo", "DEMO", "demo")]
    assert cfg.repo("demo").check_command[0] == config.PYTHON
    assert cfg.repo_for_prefix("DEMO") is cfg.repos[0]
    assert (cfg.queue.max_concurrency, cfg.queue.per_repo_concurrency, cfg.queue.max_attempts) == (
        4,
        1,
        2,
    )
    for role in config.ROLES:
        assert cfg.agents.for_role(role).command[0] == config.PYTHON


def test_an_empty_config_file_gives_the_built_in_pipeline_and_no_repositories(tmp_path: Path):
    cfg = load_text(tmp_path, "")
    assert [s.name for s in cfg.pipeline.stages] == [row[0] for row in SPEC_PIPELINE]
    assert cfg.repos == []


def test_config_lookups_name_what_is_missing():
    cfg = config.load(env={})
    assert cfg.stage("review") is not None
    assert cfg.stage("nowhere") is None
    assert cfg.repo_for_prefix("NOPE") is None
    with pytest.raises(InvalidField) as info:
        cfg.repo("nope")
    assert info.value.field == "repo"


def test_python_argv_replaces_the_python_placeholder():
    cfg = config.load(env={})
    argv = config.python_argv(cfg.agents.developer.command)
    assert config.PYTHON not in argv
    assert argv[1:] == ["-P", "-m", "conveyor.demo_agent"]


# --- unknown keys and wrong types -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("bogus = 1\n", "bogus"),
        ("[queue]\nmax_concurency = 2\n", "queue.max_concurency"),
        ("[nats]\nurl = ''\nprot = 4222\n", "nats.prot"),
        ('[[repos]]\nname = "a"\nprefix = "A"\ncheck_cmd = []\n', "repos[0].check_cmd"),
        (repos_toml(("a", "A")) + '[[repos]]\nname = "b"\nprefix = "B"\nx = 1\n', "repos[1].x"),
        ('[[pipeline.stages]]\nname = "a"\ngates = "ci_green"\n', "pipeline.stages[0].gates"),
        ('[agents.developer]\ncommand = ["x"]\ntimeout = 5\n', "agents.developer.timeout"),
        ("[agents.wizard]\ncommand = ['x']\n", "agents.wizard"),
        ("[telegram]\ntoken = 'x'\n", "telegram.token"),
        ("[wizardry]\nlevel = 1\n", "wizardry"),
    ],
)
def test_an_unknown_key_is_an_error_naming_its_dotted_path(tmp_path: Path, text: str, key: str):
    message = error_of(tmp_path, text)
    assert f"{key}: unknown key" in message
    assert "config.toml" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[queue]\nmax_concurrency = 'four'\n", "queue.max_concurrency"),
        ("[queue]\nbackoff_base_s = 'soon'\n", "queue.backoff_base_s"),
        ("[nats]\nport = 4222.5\n", "nats.port"),
        ("queue = 3\n", "queue"),
        ('[[repos]]\nname = 7\nprefix = "A"\n', "repos[0].name"),
        (
            '[[repos]]\nname = "a"\nprefix = "A"\ncheck_command = "make test"\n',
            "repos[0].check_command",
        ),
        (
            '[[pipeline.stages]]\nname = "a"\nhuman_approval = "yes"\n',
            "pipeline.stages[0].human_approval",
        ),
        ("[agents.developer]\ncommand = 'claude -p'\n", "agents.developer.command"),
        ('[agents.developer]\ncommand = ["x"]\nenv = { KEY = 1 }\n', "agents.developer.env"),
    ],
)
def test_a_wrong_type_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str):
    message = error_of(tmp_path, text)
    assert re.search(rf"(^|\s){re.escape(key)}(\[\.\.\.\])?: ", message), message


def test_a_data_dir_of_the_wrong_type_is_a_config_error_naming_the_key(tmp_path: Path):
    message = error_of(tmp_path, "data_dir = 5\n")
    assert "data_dir: " in message


def test_a_missing_required_key_names_its_table(tmp_path: Path):
    message = error_of(tmp_path, '[[repos]]\nname = "a"\n')
    assert "repos[0]" in message
    assert "prefix" in message


def test_a_file_that_is_not_toml_is_an_error_naming_the_file(tmp_path: Path):
    message = error_of(tmp_path, "[queue\nmax_concurrency = 2\n")
    assert "config.toml" in message
    assert "not valid TOML" in message


# --- environment overlay --------------------------------------------------------------------


def test_env_overrides_set_values_parsed_as_toml_scalars():
    cfg = config.load(
        env={
            "CONVEYOR_QUEUE__MAX_CONCURRENCY": "8",
            "CONVEYOR_QUEUE__BACKOFF_MAX_S": "30.5",
            "CONVEYOR_NATS__URL": "nats://nats.internal:4222",
            "CONVEYOR_LOG__LEVEL": "debug",
            "CONVEYOR_DATA_DIR": "/srv/conveyor",
        }
    )
    assert cfg.queue.max_concurrency == 8
    assert cfg.queue.backoff_max_s == 30.5
    assert cfg.nats.url == "nats://nats.internal:4222"
    assert cfg.log.level == "debug"
    assert cfg.data_dir == "/srv/conveyor"


def test_env_overrides_win_over_the_config_file(tmp_path: Path):
    cfg = load_text(
        tmp_path,
        "[queue]\nmax_concurrency = 2\nmax_attempts = 5\n",
        env={"CONVEYOR_QUEUE__MAX_CONCURRENCY": "6"},
    )
    assert (cfg.queue.max_concurrency, cfg.queue.max_attempts) == (6, 5)


def test_unrelated_and_unstructured_env_vars_are_ignored():
    cfg = config.load(
        env={
            "CONVEYOR_ROLE": "developer",
            "CONVEYOR_WORK_ITEM": "DEMO-1",
            "HOME": "/root",
            "QUEUE__MAX_CONCURRENCY": "99",
            "CONVEYOR___X": "1",
            "CONVEYOR_QUEUE__": "1",
        }
    )
    assert cfg == config.load(env={})


def test_env_is_read_from_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CONVEYOR_QUEUE__TICK_S", "0.25")
    assert config.load().queue.tick_s == 0.25


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"CONVEYOR_QUEUE__MAX_CONCURRENCY": "lots"}, "queue.max_concurrency"),
        ({"CONVEYOR_QUEUE__MAX_CONCURENCY": "2"}, "queue.max_concurency"),
        ({"CONVEYOR_NATS__PORT": "[1, 2]"}, "nats.port"),
        ({"CONVEYOR_QUEUE__MAX_CONCURRENCY": "0"}, "queue.max_concurrency"),
        ({"CONVEYOR_DATA_DIR__SUB": "x"}, "data_dir"),
    ],
)
def test_a_bad_env_value_is_an_error_naming_the_key(env: dict[str, str], key: str):
    with pytest.raises(ConfigError, match=re.escape(key)):
        config.load(env=env)


def test_env_can_override_one_setting_of_a_default_agent():
    cfg = config.load(env={"CONVEYOR_AGENTS__DEVELOPER__TIMEOUT_S": "90"})
    assert cfg.agents.developer.timeout_s == 90.0
    assert cfg.agents.developer.command == config.load(env={}).agents.developer.command


def test_env_can_override_an_agent_setting_when_the_file_defines_the_agent(tmp_path: Path):
    cfg = load_text(
        tmp_path,
        '[agents.developer]\ncommand = ["claude", "-p"]\n',
        env={"CONVEYOR_AGENTS__DEVELOPER__TIMEOUT_S": "90"},
    )
    assert (cfg.agents.developer.command, cfg.agents.developer.timeout_s) == (
        ["claude", "-p"],
        90.0,
    )


def test_overrides_are_applied_after_env():
    cfg = config.load(env={"CONVEYOR_LOG__LEVEL": "debug"}, overrides={"log": {"level": "warning"}})
    assert cfg.log.level == "warning"


# --- cross-field rules ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["Analysis", "1st", "has space", "a.b", "a/b", "", "x" * 33, "created", "done", "cancelled"],
)
def test_an_invalid_or_reserved_stage_name_is_an_error(tmp_path: Path, name: str):
    message = error_of(tmp_path, stages_toml({"name": "ok"}, {"name": name}))
    assert message.startswith("pipeline.stages[1].name:")


def test_a_duplicate_stage_is_an_error(tmp_path: Path):
    message = error_of(
        tmp_path, stages_toml({"name": "build"}, {"name": "ship"}, {"name": "build"})
    )
    assert message.startswith("pipeline.stages[2].name: duplicate stage 'build'")


def test_an_unknown_gate_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, stages_toml({"name": "build", "gate": "vibes"}))
    assert message.startswith("pipeline.stages[0].gate:")


def test_an_unknown_role_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, stages_toml({"name": "build", "role": "wizard"}))
    assert message.startswith("pipeline.stages[0].role:")


@pytest.mark.parametrize("target", ["ship", "build", "nowhere", "done"])
def test_on_fail_must_point_at_an_earlier_stage(tmp_path: Path, target: str):
    message = error_of(
        tmp_path, stages_toml({"name": "build", "on_fail": target}, {"name": "ship"})
    )
    assert message.startswith("pipeline.stages[0].on_fail:")


def test_on_fail_pointing_at_an_earlier_stage_is_accepted(tmp_path: Path):
    cfg = load_text(
        tmp_path,
        stages_toml({"name": "build", "role": "developer"}, {"name": "ship", "on_fail": "build"}),
    )
    assert [(s.name, s.on_fail) for s in cfg.pipeline.stages] == [
        ("build", "retry"),
        ("ship", "build"),
    ]


def test_an_empty_pipeline_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, "[pipeline]\nstages = []\n")
    assert message.startswith("pipeline.stages:")


def test_a_duplicate_repository_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, repos_toml(("web", "WEB"), ("web", "API")))
    assert message.startswith("repos[1].name: duplicate")


def test_a_duplicate_prefix_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, repos_toml(("web", "WEB"), ("api", "WEB")))
    assert message.startswith("repos[1].prefix: duplicate")


@pytest.mark.parametrize("name", ["../etc", "Web", "a/b", "a.b", "", "-x", "a b", "a;b", "x" * 65])
def test_a_bad_repository_name_is_an_error(tmp_path: Path, name: str):
    message = error_of(tmp_path, repos_toml(("ok", "OK"), (name, "BAD")))
    assert message.startswith("repos[1].name:")


@pytest.mark.parametrize("prefix", ["web", "1A", "A-B", "", "A" * 17])
def test_a_bad_prefix_is_an_error(tmp_path: Path, prefix: str):
    message = error_of(tmp_path, repos_toml(("web", prefix)))
    assert message.startswith("repos[0].prefix:")


def test_an_unknown_repository_template_is_an_error(tmp_path: Path):
    message = error_of(tmp_path, repos_toml(("web", "WEB")) + 'template = "fancy"\n')
    assert message.startswith("repos[0].template:")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[queue]\nmax_concurrency = 0\n", "queue.max_concurrency"),
        ("[queue]\nmax_concurrency = -3\n", "queue.max_concurrency"),
        ("[queue]\nper_repo_concurrency = 0\n", "queue.per_repo_concurrency"),
        ("[queue]\nmax_attempts = 0\n", "queue.max_attempts"),
        ("[queue]\ntick_s = 0.0\n", "queue.tick_s"),
        ("[launcher]\nslots = 0\n", "launcher.slots"),
        ("[launcher]\nkill_grace_s = -1.0\n", "launcher.kill_grace_s"),
        ("[pipeline]\nmax_developer_retries = 0\n", "pipeline.max_developer_retries"),
        ("[pipeline]\nmax_stage_retries = 0\n", "pipeline.max_stage_retries"),
        ('[agents.tester]\ncommand = ["x"]\ntimeout_s = 0\n', "agents.tester.timeout_s"),
        ("[agents.tester]\ncommand = []\n", "agents.tester.command"),
    ],
)
def test_a_non_positive_limit_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str):
    assert error_of(tmp_path, text).startswith(f"{key}:")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[forge]\nkind = 'github'\n", "forge.kind"),
        ("[tracker]\nkind = 'jira'\n", "tracker.kind"),
        ("[log]\nformat = 'xml'\n", "log.format"),
        ("[telegram]\nmin_level = 'debug'\n", "telegram.min_level"),
    ],
)
def test_an_unsupported_choice_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str):
    assert error_of(tmp_path, text).startswith(f"{key}:")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[forge]\nkind = 'gitea'\n", "gitea.url"),
        ("[forge]\nkind = 'gitea'\n[gitea]\nurl = 'ftp://x'\ntoken = 't'\n", "gitea.url"),
        ("[forge]\nkind = 'gitea'\n[gitea]\nurl = 'http://g'\n", "gitea.token"),
        ("[tracker]\nkind = 'plane'\n", "plane.url"),
        ("[tracker]\nkind = 'plane'\n[plane]\nurl = 'http://p'\n", "plane.api_key"),
        (
            "[tracker]\nkind = 'plane'\n[plane]\nurl = 'http://p'\napi_key = 'k'\n",
            "plane.workspace",
        ),
        ("[telegram]\nenabled = true\n", "telegram.bot_token"),
        ("[telegram]\nenabled = true\nbot_token = 'b'\n", "telegram.chat_id"),
        ("[reconciler]\nstage_grace_s = { nowhere = 3.0 }\n", "reconciler.stage_grace_s.nowhere"),
        ("[plane]\nper_page = 5000\n", "plane.per_page"),
        ("[gitea]\nretries = -1\n", "gitea.retries"),
    ],
)
def test_an_incomplete_integration_is_an_error_naming_the_key(tmp_path: Path, text: str, key: str):
    assert error_of(tmp_path, text).startswith(f"{key}:")


def test_a_gitea_and_plane_configuration_loads_with_secrets_from_the_environment(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(
        "[forge]\nkind = 'gitea'\n[gitea]\nurl = 'https://git.example.test'\nowner = 'acme'\n"
        "[tracker]\nkind = 'plane'\n[plane]\nurl = 'https://plane.example.test'\n"
        "workspace = 'acme'\n"
        "[[repos]]\nname = 'widgets'\nprefix = 'WID'\nplane_project = 'p-1'\n"
    )
    env = {"CONVEYOR_GITEA__TOKEN": "t0k", "CONVEYOR_PLANE__API_KEY": "k3y"}
    cfg = config.load(path, env=env)
    assert cfg.gitea.token == "t0k"
    assert cfg.plane.api_key == "k3y"
    assert cfg.repo_for_gitea("acme/widgets") is cfg.repos[0]
    assert cfg.repo_for_plane("p-1") is cfg.repos[0]
    assert cfg.repo_for_plane("") is None


# --- data_dir --------------------------------------------------------------------------------


def test_a_relative_data_dir_is_resolved_against_the_config_file_directory(tmp_path: Path):
    path = write(tmp_path, 'data_dir = "state/conveyor"\n', name="etc/conveyor.toml")
    cfg = config.load(path, env={})
    assert Path(cfg.data_dir) == (tmp_path / "etc" / "state" / "conveyor").resolve()
    assert cfg.data_path == Path(cfg.data_dir)


def test_an_absolute_data_dir_is_kept(tmp_path: Path):
    target = tmp_path / "elsewhere"
    cfg = load_text(tmp_path, f'data_dir = "{target}"\n')
    assert Path(cfg.data_dir) == target


def test_the_embedded_defaults_keep_data_dir_relative_to_the_working_directory():
    assert config.load(env={}).data_dir == ".conveyor"


def test_a_stage_without_a_role_is_a_config_error(tmp_path):
    message = error_of(tmp_path, '[[pipeline.stages]]\nname = "build"\n')
    assert "pipeline.stages[0]" in message
    assert "role" in message


def test_an_unknown_log_level_is_a_config_error(tmp_path):
    assert "log.level" in error_of(tmp_path, '[log]\nlevel = "loud"\n')


def test_env_keys_under_an_agent_env_table_keep_their_case():
    cfg = config.load(env={"CONVEYOR_AGENTS__DEVELOPER__ENV__ANTHROPIC_API_KEY": "sk-test"})
    assert cfg.agents.developer.env == {"ANTHROPIC_API_KEY": "sk-test"}
    assert cfg.agents.developer.command == cfg.agents.analyst.command


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[[repos]]\nname = "a"\nprefix = "A"\nhealth_url = "ftp://x"\n', "repos[0].health_url"),
        ('[monitor]\nrepos = ["nope"]\n', "monitor.repos[0]"),
        ("[monitor]\nerror_ratio = 1.5\n", "monitor.error_ratio"),
        ("[monitor]\nfail_threshold = 0\n", "monitor.fail_threshold"),
        ("[deploy]\nhealth_timeout_s = 0\n", "deploy.health_timeout_s"),
    ],
)
def test_deploy_and_monitor_rules_name_the_key(tmp_path: Path, text: str, key: str):
    assert key in error_of(tmp_path, text)


def test_a_protected_repository_with_health_and_rollback_loads(tmp_path: Path):
    cfg = load_text(
        tmp_path,
        '[[repos]]\nname = "core"\nprefix = "CORE"\nprotected = true\n'
        'health_url = "http://127.0.0.1:8080/health"\nrollback_command = ["./rollback.sh"]\n'
        '[monitor]\nrepos = ["core"]\nwindow_s = 60.0\n',
    )
    repo = cfg.repo("core")
    assert repo.protected
    assert repo.rollback_command == ["./rollback.sh"]
    assert cfg.monitor.repos == ["core"]


def test_a_deploy_longer_than_the_reaper_backstop_is_refused(tmp_path: Path):
    message = error_of(tmp_path, "[deploy]\ntimeout_s = 7200.0\n")
    assert "deploy.timeout_s" in message
    assert "reaper.max_running_s" in message
