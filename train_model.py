"""Train the LSTM that predicts each symbol's next-day price difference: ``python train_model.py``.

Reads ``processed_stock_data.csv`` (``data_collection.build_features`` output), builds windows
with ``model_management.make_windows`` (the same code live trading and backtests use), splits
chronologically by session date (train / validation / test, ``VALIDATION_FRACTION`` and
``TEST_FRACTION``), fits the scaler on the training period only, trains with early stopping and
fixed seeds, and reports ``directional_accuracy``, ``MSE`` and skill against predicting no change
on the validation and test periods.

Model selection uses the validation period only; the test period stays clean for reporting.
A new model passes validation only if its validation skill is positive against both predicting
no change and the training-mean constant, significant against no change (one-sided
Diebold-Mariano p-value below ``PROMOTION_ALPHA``), and its validation MSE is not worse than the
current model's on the same (new) validation period. Then:

* no model installed yet (the first one): it is installed as the live model;
* a live model installed: it becomes the SHADOW model (``models/shadow/``, ``shadow_model.py``):
  the live model keeps trading with its go-live evidence intact, each cycle records both
  models' predictions, and after ``SHADOW_MIN_SESSIONS`` sessions the shadow is promoted at the
  start of a cycle if a Diebold-Mariano test shows it is not worse than the live model;
* ``--force [--reason "..."]``: installed as the live model at once, whatever its skill
  (audited: ``model_promotion``/``forced`` with the reason).

The replaced model goes to ``models/backups/``; a model that fails is kept in
``models/candidates/`` (never used). Exit codes: 0 ok (live, shadow, or kept because the current
model is better), 1 error (one ERROR line says why), 3 not promoted because the new model has no
significant validation skill (one ERROR line ``model NOT PROMOTED: ...`` naming the statistic;
the current model is kept).

Profiles: ``--profile tiny`` (or ``TRAIN_PROFILE=tiny``): window 10, 8 units, a few epochs, for
``make demo`` and tests (well under a minute on 2 cores).

This file is the command line; the training routine itself (shared with the walk-forward) is
``model_training.py``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import config
import constants as C
import model_management as mm
from data_collection import DataError
from errors import UserFacingError, as_user_facing, install_excepthook, is_user_facing
from fileutil import process_lock
from logging_setup import setup_logging
from model_training import PROFILES, TrainConfig, TrainingError, fmt_skill, train

log = logging.getLogger("train")
TRAIN_LOCK_NAME = "train_model.lock"   # in LOCK_DIR: one training at a time (each would promote)
EXIT_NO_SKILL = 3      # the new model has no validation skill: not promoted, the current one kept


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    install_excepthook()
    parser = argparse.ArgumentParser(description="Train the LSTM price-difference model.")
    parser.add_argument("--force", action="store_true",
                        help="install the new model as the live model now (no shadow), even if the current one is "
                             "better or it has no validation skill (audited, with --reason)")
    parser.add_argument("--reason", help="with --force: why (recorded in the audit trail)")
    parser.add_argument("--epochs", type=int, help="max epochs (early stopping may end sooner)")
    parser.add_argument("--units", type=int, help="LSTM units")
    parser.add_argument("--layers", type=int, help="stacked LSTM layers")
    parser.add_argument("--window", type=int, help="sessions per input window")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default TRAIN_SEED)")
    parser.add_argument("--data", help="processed CSV (default: processed_stock_data.csv in TRADING_HOME)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        default=os.environ.get(C.ENV_TRAIN_PROFILE, "").strip().lower() or "default",
                        help="'tiny': window 10, 8 units, few epochs (demo/tests); env TRAIN_PROFILE")
    parser.add_argument("--shuffle-targets", action="store_true",
                        help="control run: train on shuffled targets (must show no skill); never promoted without --force")
    args = parser.parse_args(argv)
    if args.profile not in PROFILES:
        parser.error(f"unknown profile {args.profile}")
    setup_logging("trading")
    with process_lock(config.path(C.LOCK_DIR) / TRAIN_LOCK_NAME, "train_model.py") as holder:
        if holder:
            log.error("training NOT started: another training is running (%s); both would promote a "
                      "model. Wait for it to finish, then run python train_model.py again", holder)
            return 1
        return _train(args)


def _train(args) -> int:
    log.info("training started (profile=%s, home=%s)", args.profile, config.home())
    try:
        result = train(TrainConfig(args.data, profile=args.profile, epochs=args.epochs, units=args.units,
                                   window=args.window, layers=args.layers, seed=C.TRAIN_SEED if args.seed is None else args.seed, force=args.force, reason=args.reason,
                                   shuffle_targets=args.shuffle_targets))
    except (DataError, TrainingError, mm.ModelError, UserFacingError) as exc:
        log.error("training FAILED: %s", exc)
        return 1
    except Exception as exc:
        if is_user_facing(as_user_facing(exc)):           # a full disk met by a library
            log.error("training FAILED: %s", as_user_facing(exc))
        else:
            log.exception("training FAILED with an unexpected error: %s", exc)
        return 1
    v = result["metrics"]["validation"]
    t = result["metrics"]["test"]
    stage = {"live": "promoted", "shadow": "shadow (the live model keeps trading)"}.get(result["stage"], "not promoted")
    print(f"{stage}: validation MSE={v['MSE']:.4f} "
          f"(no change {v['baseline']['MSE']:.4f}) skill={v['skill']:+.4f} skill_vs_mean="
          f"{fmt_skill(v.get('skill_vs_training_mean'))}; test skill={t['skill']:+.4f} "
          f"directional_accuracy={t['directional_accuracy']:.4f} -- {result['reason']}")
    if result["no_validation_skill"] and not result["promoted"]:
        log.error("model NOT PROMOTED: %s; the current model is kept (python train_model.py --force installs "
                  "it anyway, audited)", result["no_validation_skill"])
        return EXIT_NO_SKILL
    return 0


if __name__ == "__main__":
    sys.exit(main())
