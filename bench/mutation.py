"""Mutation testing of the core modules with mutmut: does a test fail when the code is broken?

mutmut makes one small change at a time (a comparison flipped, a constant off by one, an
argument dropped, a string changed) and runs the tests that exercise the changed function. A
change no test notices — a *surviving mutant* — is a place where a bug would go unseen. Each
survivor gets a test that kills it, or a line in ``bench/mutation_equivalents.txt`` saying why
it cannot change behaviour (e.g. ``float("NAN")`` is ``float("nan")``).

Each group below mutates some files (or some functions of a file) and runs a chosen set of the
*fast* tests: a mutant killed only by a slow end-to-end test counts as surviving, so the core
functions are guarded by unit tests. Error-message wording is not mutated (lines raising
MedTransferError: user-facing text, whose key words tests match).

    python bench/mutation.py                      # every group (about an hour on 2 cores)
    python bench/mutation.py --groups metrics loss
    python bench/mutation.py --groups shift --show   # print each surviving mutant's diff
    python bench/mutation.py --groups metrics --merge  # re-run one group, keep the others' results

Writes ``bench/MUTATION.md`` (per-module kill rates and the survivors) and prints the table.
Numbers are only comparable on the same code: mutmut numbers mutants per function.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "bench" / "mutation_equivalents.txt"

RELIABILITY = "Testing/test_reliability.py"
# group → files to mutate, tests to run, and (optionally) only these functions count
GROUPS = {
    "metrics": (["MedTransferLib/data/metrics.py"],
                ["Testing/test_metrics.py", "Testing/test_classify.py::test_metrics_match_hand_computed_values"], None),
    "loss": (["MedTransferLib/training/losses.py"], ["Testing/test_performance.py"], ["loss_function"]),
    "datasets": (["MedTransferLib/data/split.py", "MedTransferLib/data/sampling.py", "MedTransferLib/data/slabs.py",
                  "MedTransferLib/data/augment.py"],
                 ["Testing/test_dataset.py", "Testing/test_dataset_units.py",
                  "Testing/test_3d.py::test_3d_patches_learn_only_from_training_slices",
                  "Testing/test_properties.py", "Testing/test_performance.py"], None),
    "strategies": (["MedTransferLib/training/strategies.py"],
                   ["Testing/test_strategies_units.py",
                    "Testing/test_strategies.py::test_adabn_statistics_are_the_plain_average_over_all_batches",
                    "Testing/test_strategies.py::test_frozen_keeps_encoder_weights_and_bn_statistics_bit_identical",
                    "Testing/test_strategies.py::test_finetune_trains_every_layer"], None),
    "package": (["MedTransferLib/package/store.py", "MedTransferLib/package/manifest.py"],
                ["Testing/test_manifest.py",
                 f"{RELIABILITY}::test_malicious_pickles_are_refused_by_every_loading_path_and_never_run",
                 f"{RELIABILITY}::test_a_package_cannot_name_files_outside_itself"], None),
    "weights": (["MedTransferLib/models/backbones/weights.py"],
                ["Testing/test_weights_units.py",
                 f"{RELIABILITY}::test_malicious_pickles_are_refused_by_every_loading_path_and_never_run"], None),
    "geometry": (["MedTransferLib/core/case.py", "MedTransferLib/data/io.py"],
                 ["Testing/test_io.py"], None),
    "preprocessing": (["MedTransferLib/data/preprocessing.py", "MedTransferLib/data/histogram.py"],
                      ["Testing/test_preprocessing.py", "Testing/test_preprocessing_units.py",
                       "Testing/test_shift.py::test_histogram_standardisation_maps_different_scanners_onto_one_scale",
                       "Testing/test_shift.py::test_input_check_names_wrong_modality_presets_and_off_ranges"], None),
    "shift": (["MedTransferLib/shift/input_check.py", "MedTransferLib/shift/ood.py", "MedTransferLib/shift/calibration.py",
               "MedTransferLib/shift/prior.py", "MedTransferLib/shift/audit.py", "MedTransferLib/shift/adabn.py"],
              [f"Testing/test_shift.py::{name}" for name in (
                  "test_em_and_bbse_recover_a_known_target_prior",
                  "test_temperature_scaling_undoes_overconfidence_and_lowers_calibration_error",
                  "test_prior_correction_on_prediction_rows_reports_the_prior_and_changed_decisions",
                  "test_label_audit_reproduces_hand_computed_agreement",
                  "test_site_audit_flags_the_site_that_draws_structures_larger",
                  "test_input_check_names_wrong_modality_presets_and_off_ranges",
                  "test_stats_distance_against_hand_computed_values")]
              + ["Testing/test_strategies_units.py", "Testing/test_shift_units.py",
                 "Testing/test_strategies.py::test_adabn_statistics_are_the_plain_average_over_all_batches"], None),
    "resume": (["MedTransferLib/training/checkpoints.py", "MedTransferLib/training/optim.py",
                "MedTransferLib/training/loop.py"],
               ["Testing/test_hooks.py", "Testing/test_performance.py",
                f"{RELIABILITY}::test_a_crash_between_the_two_renames_of_a_checkpoint_leaves_the_previous_one_usable"],
               ["save_state", "load_state", "match_layouts", "batches", "start", "epoch_end"]),
    "budget": (["MedTransferLib/training/hooks.py", "MedTransferLib/training/preview.py"],
               ["Testing/test_hooks.py", "Testing/test_preview.py"],
               [f"TimeBudgetǁ{m}" for m in ("__init__", "start", "_own", "left", "kept", "average", "step_end", "epoch_end",
                                                    "should_stop")]
               + [f"Previewǁ{m}" for m in ("__init__", "start", "plan", "step_end", "last_cost", "_interval",
                                           "_whole_fits", "end", "_write")]
               + ["LoopStateǁremaining", "SlicePreviewǁwrite"]),
    "guide": (["MedTransferLib/inference/guide.py"],
              [f"Testing/test_guide.py::{name}" for name in (
                  "test_signed_distance_gives_back_the_mask_and_mm",
                  "test_a_growing_disc_is_interpolated_between_painted_slices",
                  "test_every_gap_is_interpolated_wherever_it_starts",
                  "test_the_interpolated_shape_never_grows_or_shrinks_past_what_was_painted",
                  "test_the_linear_switch_interpolates_radii_in_straight_lines",
                  "test_the_slopes_are_fritsch_and_carlsons",
                  "test_a_structure_growing_steadily_is_interpolated_in_straight_lines_to_its_ends",
                  "test_where_two_interpolated_structures_overlap_the_deeper_one_wins",
                  "test_anisotropic_pixels_are_interpolated_in_mm",
                  "test_only_structures_on_both_sides_are_interpolated_and_nothing_beyond",
                  "test_fuse_network_overrides_only_when_very_sure",
                  "test_fuse_gives_the_definitions_classes_on_every_kind_of_slice",
                  "test_where_no_structure_can_be_the_network_needs_far_higher_odds",
                  "test_a_structure_on_one_side_of_a_wide_gap_is_left_to_the_network",
                  "test_across_a_wide_gap_the_interpolated_outline_is_soft",
                  "test_guide_for_maps_label_values_and_refuses_unknown_ones",
                  "test_case_guide_counts_only_slices_painted_all_over_along_the_models_axis")]
              + ["Testing/test_preview.py::test_the_preview_of_a_volume_painted_on_some_slices_is_guided_by_them"],
              None),
    "orientation": (["MedTransferLib/data/orientation.py", "MedTransferLib/training/preview.py",
                     "MedTransferLib/training/classification.py"],
                    [f"Testing/test_orientation.py::{name}" for name in (
                        "test_reordering_matches_simpleitk_and_goes_back",
                        "test_an_oblique_grid_goes_to_its_nearest_order_and_keeps_its_obliquity",
                        "test_slices_and_orders_map_back",
                        "test_a_preview_of_a_reordered_case_is_written_in_its_own_order",
                        "test_a_transposed_case_s_preview_speaks_of_its_own_slices",
                        "test_a_classification_entry_s_slice_labels_follow_its_case_into_another_order",
                        "test_a_slice_classifier_trains_on_each_case_s_slices_in_the_first_case_s_order")],
                    ["orientation_code", "reorientation", "to_order", "entry_in_order"]
                    + [f"Reorientationǁ{m}" for m in ("_order", "forward", "back", "case", "slices_back",
                                                      "slices_forward")]
                    + [f"SlicePreviewǁ{m}" for m in ("to_case", "from_view", "suggest")]),
    # predict_slices itself is under a decorator (torch.inference_mode): mutmut leaves it alone
    "smoothing": (["MedTransferLib/inference/windows.py"], ["Testing/test_slice_smoothing.py"],
                  ["smooth_weight", "slice_smoothing", "_smoothed"]),
    # 4D files as channels (the Decathlon's layout) and the memory check from the headers
    "channels": (["MedTransferLib/data/io.py", "MedTransferLib/data/datalist.py", "MedTransferLib/training/run.py"],
                 ["Testing/test_multimodal.py::test_a_4d_file_holds_a_cases_channels_as_the_decathlon_ships_them",
                  f"{RELIABILITY}::test_a_datalist_too_large_for_memory_is_refused_from_its_headers_before_reading",
                  f"{RELIABILITY}::test_a_volume_larger_than_memory_allows_is_refused_before_any_work"],
                 ["read_channels", "stored_voxels", "Datalistǁstored_voxels", "check_datalist_memory"]),
}
KILLED = {"killed", "timeout", "segfault"}   # a crash of the test process is a failed test
MAX_DIFFS = 200   # survivors shown with their diff per group (the rest are listed by name)
NO_MUTATE = r"raise MedTransferError\("   # error-message wording: user-facing text


def _pyproject(files, tests) -> str:
    def toml_list(items):
        return "[" + ", ".join(json.dumps(i) for i in items) + "]"

    return "\n".join([
        "[tool.pytest.ini_options]",
        'testpaths = ["Testing"]',
        "",
        "[tool.mutmut]",
        'source_paths = ["MedTransferLib"]',
        f"only_mutate = {toml_list(files)}",
        f"pytest_add_cli_args_test_selection = {toml_list(tests)}",
        'pytest_add_cli_args = ["-p", "no:cacheprovider"]',
        'also_copy = ["Testing"]',
        f"do_not_mutate_patterns = {toml_list([NO_MUTATE])}",
        "",
    ])


def run_group(name: str, workdir: Path, timeout: int, children: int = 1) -> dict:
    files, tests, functions = GROUPS[name]
    work = workdir / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shutil.copytree(ROOT / "MedTransferLib", work / "MedTransferLib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "Testing", work / "Testing", ignore=shutil.ignore_patterns("__pycache__"))
    (work / "pyproject.toml").write_text(_pyproject(files, tests), encoding="utf-8")
    # one thread: mutmut forks a warmed-up process per mutant, and a forked OpenMP thread pool hangs
    # (every torch test would time out)
    env = dict(os.environ, TERM="dumb", PYTHONPATH="", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MEDTRANSFER_TEST_THREADS="1")
    mutmut = [sys.executable, "-m", "mutmut"]
    t0 = time.monotonic()
    with open(work / "mutmut.log", "w", encoding="utf-8") as log:
        # one mutant at a time: two torch processes on 2 cores slow each other ~10x (and time out)
        subprocess.run([*mutmut, "run", "--max-children", str(children)], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    seconds = time.monotonic() - t0
    out = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                         text=True).stdout
    results = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            results[m.group(1)] = m.group(2).strip()
    if functions:
        results = {k: v for k, v in results.items() if any(f"x_{f}__mutmut_" in k or f"ǁ{f}__mutmut_" in k
                                                          for f in functions)}
    diffs = {}
    for mutant, status in list(results.items()):
        if status not in KILLED and len(diffs) < MAX_DIFFS:   # `mutmut show` takes ~1 s each
            diffs[mutant] = subprocess.run([*mutmut, "show", mutant], cwd=work, env=env, capture_output=True,
                                           text=True).stdout
    return {"group": name, "files": files, "tests": tests, "functions": functions, "seconds": round(seconds),
            "results": results, "diffs": diffs}


def load_equivalents() -> dict:
    eq = {}
    if EQUIVALENTS.exists():
        for line in EQUIVALENTS.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                name, _, reason = line.partition(" ")
                eq[name] = reason.strip()
    return eq


def score(run: dict, equivalents: dict) -> dict:
    per_module: dict = {}
    for mutant, status in run["results"].items():
        module = mutant.split(".x", 1)[0].split(".xǁ", 1)[0]
        m = per_module.setdefault(module, {"mutants": 0, "killed": 0, "equivalent": 0, "survived": [], "untested": []})
        m["mutants"] += 1
        if status in KILLED:
            m["killed"] += 1
        elif mutant in equivalents:
            m["equivalent"] += 1
        elif status == "no tests":
            m["untested"].append(mutant)
        else:
            m["survived"].append(mutant)
    for m in per_module.values():
        relevant = m["mutants"] - m["equivalent"]
        m["rate"] = m["killed"] / relevant if relevant else 1.0
    return per_module


def _cpu() -> str:
    sys.path.insert(0, str(ROOT / "bench"))
    from machine import cpu  # bench/machine.py

    return cpu()


def report(runs: list[dict], equivalents: dict, show: bool) -> str:
    lines = ["# Mutation testing (bench/mutation.py)", "",
             f"Measured {time.strftime('%Y-%m-%d')} on {_cpu()}, mutmut, Python {platform.python_version()}. "
             "A mutant is *killed* when a test fails on it (or it times out, or the test process crashes); "
             "*equivalent* mutants (bench/mutation_equivalents.txt, with "
             "the reason) cannot change behaviour; *untested* mutants sit in code the group's tests never run. "
             "Kill rate = killed / (mutants − equivalent). mutmut does not mutate functions under a decorator "
             "(properties; AdaBN was rewritten without one so that it is counted).", "",
             "| group | module | mutants | killed | equivalent | survived | untested | kill rate |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    details = []
    for run in runs:
        for module, m in sorted(score(run, equivalents).items()):
            lines.append(f"| {run['group']} | {module} | {m['mutants']} | {m['killed']} | {m['equivalent']} | "
                         f"{len(m['survived'])} | {len(m['untested'])} | {100 * m['rate']:.1f} % |")
            for mutant in m["survived"] + m["untested"]:
                diff = run["diffs"].get(mutant, "")
                changed = [ln for ln in diff.splitlines() if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---"))]
                details.append(f"- `{mutant}` ({run['results'][mutant]}): " + " → ".join(
                    f"`{ln[1:].strip()}`" for ln in changed[:2]))
                if show:
                    print(diff)
    lines += ["", "Tests per group: " + "; ".join(f"{r['group']}: {', '.join(r['tests'])}"
                                                   + (f" (functions {', '.join(r['functions'])})" if r["functions"] else "")
                                                   for r in runs), ""]
    if details:
        lines += ["## Mutants no test kills", ""] + details + [""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    ap.add_argument("--workdir", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "medtransfer-mutation"))
    ap.add_argument("--timeout", type=int, default=3 * 3600, help="seconds per group")
    ap.add_argument("--report", default=str(ROOT / "bench" / "MUTATION.md"))
    ap.add_argument("--show", action="store_true", help="print each surviving mutant's diff")
    ap.add_argument("--children", type=int, default=1, help="mutants tested at once (1: torch uses the cores)")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other groups' last results (--workdir's runs.json) in the report")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the report from the last results (--workdir's runs.json), e.g. after adding "
                         "equivalents; runs nothing")
    a = ap.parse_args(argv)
    saved = Path(a.workdir) / "runs.json"
    runs = {r["group"]: r for r in json.loads(saved.read_text())} if (a.merge or a.report_only) and saved.exists() else {}
    for name in [] if a.report_only else a.groups:
        print(f"== {name}", flush=True)
        runs[name] = run_group(name, Path(a.workdir), a.timeout, a.children)
        saved.write_text(json.dumps(list(runs.values()), indent=1))
    runs = [runs[g] for g in GROUPS if g in runs]
    text = report(runs, load_equivalents(), a.show)
    Path(a.report).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
