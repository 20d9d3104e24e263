"""The audit under secure aggregation runs the real protocol: the server sees only the decoded sum,
so it cannot tell who holds an item (AUC 0.5), with or without DP, and the model is the plain one."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.config import load_config
from fedrec.privacy.audit import AuditSettings, run_audit

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["data.num_users=40", "data.num_items=60", "model.dim=4", "train.rounds=2", "train.batch_size=512"]


@pytest.fixture(scope="module")
def audits() -> dict[str, dict]:
    config = load_config(ROOT / "configs" / "default.toml", SMALL)
    dp = load_config(ROOT / "configs" / "default.toml", [*SMALL, "privacy.noise_multiplier=0.5", "privacy.delta=1e-4"])
    return {"plain": run_audit(config, AuditSettings()), "secagg": run_audit(config, AuditSettings(secagg=True)),
            "secagg_dp": run_audit(dp, AuditSettings(secagg=True))}


def test_secure_aggregation_leaves_the_server_guessing(audits):
    plain, secagg = audits["plain"], audits["secagg"]
    assert plain["audit_item_auc"] > 0.99
    assert secagg["audit_item_auc"] == pytest.approx(0.5)  # one cohort, one sum: the same guess for every client
    assert secagg["audit_item_auc_per_client"] == pytest.approx(secagg["audit_prior_item_auc_per_client"], abs=0.02)
    assert secagg["audit_rating_rmse"] == secagg["audit_rating_rmse_baseline"]
    assert secagg["rmse"] == pytest.approx(plain["rmse"], abs=1e-5)  # the protocol's sum is the plain aggregate


def test_the_audit_measures_the_protocol(audits):
    plain, secagg = audits["plain"], audits["secagg"]
    assert secagg["bytes_up_rounds"] == 2 and secagg["secagg_seconds_per_round"] > 0  # both observed rounds ran it
    per_client = secagg["bytes_up_per_round"] / 40
    assert per_client > (60 * 6 + 2) * 8  # at least the masked vector: 60 items x (4 + 1 + weight), bias, size
    assert secagg["bytes_up_per_round"] > 10 * plain["bytes_up_per_round"]


def test_secure_aggregation_with_dp(audits):
    dp = audits["secagg_dp"]
    assert dp["audit_dp"] and dp["audit_item_auc"] == pytest.approx(0.5)
    assert dp["rmse"] != audits["secagg"]["rmse"]  # the noise entered the model
