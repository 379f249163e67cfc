"""Stage 5 — domain shift: the input check, the out-of-distribution score, AdaBN, calibration,
prior correction and label audits. The names below are the toolkit's public face."""

from MedTransferLib.data.histogram import (
    HIST_PERCENTILES,
    apply_landmarks,
    learn_landmarks,
)
from MedTransferLib.shift.adabn import adapt_bn
from MedTransferLib.shift.audit import label_audit, site_audit
from MedTransferLib.shift.calibration import expected_calibration_error, fit_temperature
from MedTransferLib.shift.input_check import (
    input_check,
    intensity_profile,
    training_reference,
)
from MedTransferLib.shift.ood import (
    activation_stats,
    calibrate_ood,
    chunk_scores,
    ood_score,
    ood_verdict,
    reference_stats,
    stats_distance,
)
from MedTransferLib.shift.prior import (
    adjust_posteriors,
    bbse_prior,
    class_fractions,
    confusion_given_truth,
    em_prior,
    fraction_flag,
    prior_correction,
)

__all__ = ["adapt_bn", "label_audit", "site_audit", "expected_calibration_error", "fit_temperature",
           "input_check", "intensity_profile", "training_reference", "activation_stats", "calibrate_ood",
           "chunk_scores", "ood_score", "ood_verdict", "reference_stats", "stats_distance", "adjust_posteriors",
           "bbse_prior", "class_fractions", "confusion_given_truth", "em_prior", "fraction_flag",
           "prior_correction", "HIST_PERCENTILES", "apply_landmarks", "learn_landmarks"]
