"""The MLflow tags hyporay writes and reads: one name each, for the engine that sets them and the runs table that
reads them back. Dependency-free."""
from __future__ import annotations

PARENT_TAG = "mlflow.parentRunId"
TRIAL_KEY_TAG = "hyporay.trial_key"   # a trial's deterministic key: finds its child run again
SWEEP_TAG = "hyporay.sweep"           # the sweep or search script that made a run
ROLE_TAG = "hyporay.role"             # sweep | study (parent runs) | trial (child runs)
FRONTIER_LABEL_TAG = "hyporay.frontier_label"  # parent run: the trial field frontier points are labelled by
THREAT_TAG = "hyporay.threat_model"   # parent run: the train/eval attacks every number of it was measured under
PARTS_TAG = "hyporay.parts"           # the parts of the paper a trial was planned for (comma-separated)
CURVES_TAG = "hyporay.curves"         # the frontier curves a trial feeds (natural λ = 0: every regularised trainer's)
DIVERGED_TAG = "diverged"             # "true" on a trial stopped by a non-finite training loss (run FAILED)
DIVERGED_EPOCH_TAG = "diverged_epoch"
DEGENERATE_TAG = "degenerate"         # "true" on a finished trial whose model is constant or non-finite
MIXED_TAG = "hyporay.provenance_mixed"  # a run continued on other code than it started with: what, in order
OPTUNA_STATE_TAG = "optuna_state"     # a study's child run: COMPLETE / PRUNED / FAIL
OPTUNA_TRIAL_TAG = "optuna.trial_number"
CREATE_TAG = "hyporay.create_id"      # parent runs: a random id that finds the run again if its create's answer is lost
