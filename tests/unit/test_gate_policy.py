"""Gate contracts: the data agent instructions are generated from matches what gates check."""

from __future__ import annotations

import pytest

from actors import gate_policy as gp
from conveyor import pipeline as pl

TID = "DEMO-1"


class Subject:
    id = TID
    branch = "feature/DEMO-1-x"
    job_id = "DEMO-1.review.1.work"


def fm(**fields: object) -> str:
    lines = "".join(f"{key}: {value}\n" for key, value in fields.items())
    return f"---\n{lines}---\n\nbody\n"


def test_every_gate_has_a_contract_and_an_evaluation():
    assert set(gp.GATE_CONTRACTS) == pl.GATES | {pl.GATE_BRANCH_EXISTS, pl.GATE_PR_MERGED}


def test_gate_files_are_the_contracts_files():
    assert gp.GATE_FILES[pl.GATE_ANALYSIS] == (*pl.ANALYSIS_DOCS, pl.TEST_PLAN)
    assert gp.GATE_FILES[pl.GATE_REVIEW] == (pl.REVIEW,)
    assert gp.GATE_FILES[pl.GATE_TESTS] == (pl.TEST_REPORT,)
    assert gp.GATE_FILES[pl.GATE_STAGING] == (pl.STAGING_LOG,)
    assert gp.GATE_FILES[pl.GATE_DEPLOY] == (pl.DEPLOY_LOG,)
    assert pl.GATE_ARCHITECTURE not in gp.GATE_FILES


def test_the_contracts_name_the_required_keys_and_passing_values():
    review = gp.GATE_CONTRACTS[pl.GATE_REVIEW].artifacts[0]
    assert (review.name, review.key, review.passing) == (pl.REVIEW, "verdict", (pl.APPROVED,))
    assert review.required == ("verdict",)
    deploy = gp.GATE_CONTRACTS[pl.GATE_DEPLOY].artifacts[0]
    assert (deploy.key, deploy.passing, deploy.required) == (
        pl.GATE_DEPLOY,
        (pl.SUCCESS,),
        (pl.GATE_DEPLOY,),
    )
    adr = gp.GATE_CONTRACTS[pl.GATE_ARCHITECTURE].artifacts[0]
    assert (adr.name, adr.any_in_dir, adr.required) == (pl.ADR_DIR, True, ("type",))


@pytest.mark.parametrize(
    "gate",
    [pl.GATE_REVIEW, pl.GATE_TESTS, pl.GATE_STAGING, pl.GATE_DEPLOY],
)
def test_a_verdict_gate_passes_exactly_on_the_contracts_passing_values(gate: str):
    # Given the contract's artifact written with each value its schema allows
    rule = gp.GATE_CONTRACTS[gate].artifacts[0]
    allowed = {
        "verdict": (pl.APPROVED, pl.REQUEST_CHANGES),
        "result": (pl.TESTS_PASS, pl.TESTS_FAIL),
    }.get(rule.key, (pl.SUCCESS, pl.FAILED))
    for value in allowed:
        text = fm(work_item_id=TID, **{rule.key: value})
        inputs = gp.GateInputs(files={pl.artifact_path(TID, rule.name): text})
        # When the gate is evaluated
        result = gp.evaluate_gate(gate, Subject(), inputs)
        # Then it passes on the passing values and sends the work back on the others
        assert result.verdict == ("pass" if value in rule.passing else "rework"), value
