"""The paper's substandard training sets: Quality, Naive, Noise, Mislabeling and Poisoning (P1-P5).

000 §3.2 trains the false friend on five kinds of training data (reference §5); 001 (Tao et al.,
"Better Safe Than Sorry") defines the five delusive attacks P1-P5 used for the Poisoning set. Pure
PyTorch: this module never imports Ray, MLflow or Optuna.

>>> from hyporay.data import load_dataset
>>> from hyporay.variants import VariantSpec, build_training_set
>>> ds = load_dataset("digits", seed=0)
>>> x, y = build_training_set(ds, VariantSpec("poisoning", method="p1", eps=0.1), seed=0, cache_dir="cache")

Images are N x C x H x W with the dtype convention of ``ds.x_train``: uint8 in 0..255 stays uint8,
float stays float32 in [0, 1]. Labels are int64 of shape N in [0, K). ε is in pixel units of [0, 1]
images (8/255 is the usual l_inf budget), whatever the storage dtype.

004's smuggled training sets (a seller who knows the test split nudges every training image toward a classifier fitted
on it) are built by :mod:`hyporay.variants.smuggle` (``smuggle``, ``smuggling_gap``).

Generated sets (noise, mislabeling, poisoning) can be cached on disk (``cache_dir``): one file per
set, named by a sha256 key of everything that determines it, written atomically and computed once
across processes under a file lock (see :func:`build_training_set`).
"""
from hyporay.variants.build import build_training_set, cache_path, dataset_fingerprint
from hyporay.variants.delusive import delusive_perturb, quantize_in_ball, train_source_model
from hyporay.variants.smuggle import SmuggleSpec, feature_shift, smuggle, smuggling_gap, smuggling_trial
from hyporay.variants.spec import FORMAT_VERSION, POISON_METHODS, VARIANTS, VariantSpec

__all__ = [
    "FORMAT_VERSION", "POISON_METHODS", "VARIANTS", "VariantSpec", "build_training_set", "cache_path",
    "dataset_fingerprint", "delusive_perturb", "quantize_in_ball", "train_source_model", "SmuggleSpec", "feature_shift",
    "smuggle", "smuggling_gap", "smuggling_trial",
]
