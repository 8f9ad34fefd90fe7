"""MLflow, below the engine and the analysis: the store (``store``), the tags (``tags``), writing runs (``log``) and
reading them back as the runs table (``runs``, pandas). The store and writing API is re-exported here (light:
mlflow is imported when first used); ``hyporay.tracking.runs`` is imported by name."""
from hyporay.tracking.log import (
    find_child,
    find_or_create_child,
    is_final,
    log_metrics,
    log_params,
    mark_degenerate,
    mark_diverged,
    note_code_change,
    provenance_tags,
    set_tags,
)
from hyporay.tracking.store import (
    TrackingError,
    TrackingUnavailable,
    check_reachable,
    client,
    create_once,
    default_artifact_location,
    default_tracking_uri,
    open_store,
    patience,
    retry,
    set_patience,
)
from hyporay.tracking.tags import (
    CREATE_TAG,
    CURVES_TAG,
    FRONTIER_LABEL_TAG,
    PARENT_TAG,
    PARTS_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    THREAT_TAG,
    TRIAL_KEY_TAG,
)

__all__ = ["CREATE_TAG", "CURVES_TAG", "FRONTIER_LABEL_TAG", "PARENT_TAG", "PARTS_TAG", "ROLE_TAG", "SWEEP_TAG",
           "THREAT_TAG", "TRIAL_KEY_TAG", "TrackingError", "TrackingUnavailable", "check_reachable", "client",
           "create_once", "default_artifact_location", "default_tracking_uri", "find_child", "find_or_create_child",
           "is_final", "log_metrics", "log_params", "mark_degenerate", "mark_diverged", "note_code_change",
           "open_store", "patience", "provenance_tags", "retry", "set_patience", "set_tags"]
