"""REPORT.md, report.json and the plots, from the study's workdirs (their JSON files only).

Reads, under ROOT: `cells/<cell>/<seed dir>/cell.json` (the harness's record of each job:
cell, seed, status, wall times, commands, commit), `metrics_<test split>.json` (every reported
number), `metrics.json` and `metrics_history.jsonl` (validation: convergence curves),
`config.json` (steps), `pipeline.json` (pipeline cells), and `pseudo/*/*/cell.json` with the
pseudo labels' `quality.json` / `manifest.json`. Nothing is re-evaluated; no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import datetime
import glob
import json
import math
import os
import subprocess

from rethink_tf.training import history as history_lib  # JSON only, no TensorFlow

import recording
import stats
import tables

PRIMARY = {"detection": "AP", "segmentation": "mIoU"}
ALPHA = 0.05  # two-sided: a check's verdict and its finding's family-wise (Holm) error
CONFIDENCE = 1.0 - ALPHA  # the intervals' coverage (exactly 0.95)
POWER = 0.8  # the "seeds for 80 % power" column
MAX_SEEDS_SEARCHED = 30  # beyond this, "> 30"
MAX_SUGGESTED_SEEDS = 10  # "More seeds" lists the checks that would need at most this many


# ------------------------------------------------------------------------------------------
# Reading the workdirs.
# ------------------------------------------------------------------------------------------

def _read(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


@dataclasses.dataclass
class Run:
    """What the report knows of one job's workdir."""
    cell: str
    seed: int
    stage: str
    workdir: str
    record: dict
    test: dict  # {part or "": metrics_<test split>.json}
    history: dict  # {part or "": [validation records]}
    config: dict  # {part or "": config.json}
    pipeline: dict | None = None


def load_runs(root):
    """{(cell, seed): Run} for every workdir under ROOT/cells with a cell.json."""
    runs = {}
    for path in sorted(glob.glob(os.path.join(root, "cells", "*", "*", "cell.json"))):
        workdir = os.path.dirname(path)
        record = _read(path, {})
        if not record.get("cell"):
            continue
        split = record.get("test_split", "test")
        parts = ("teacher", "student") if record.get("stage") == "pipeline" else ("",)
        test, history, config = {}, {}, {}
        for part in parts:
            d = os.path.join(workdir, part) if part else workdir
            m = _read(os.path.join(d, f"metrics_{split}.json"))
            if m is not None:
                test[part] = m
            history[part] = history_lib.read_metrics_history(d)
            config[part] = _read(os.path.join(d, "config.json"), {})
        run = Run(record["cell"], int(record.get("seed", 0)), record.get("stage", ""), workdir,
                  record, test, history, config,
                  pipeline=_read(os.path.join(workdir, "pipeline.json")))
        runs[(run.cell, run.seed)] = run
    return runs


def load_pseudo(root):
    """[(record, quality or None, manifest or None)] for every pseudo-label directory."""
    out = []
    for path in sorted(glob.glob(os.path.join(root, "pseudo", "*", "*", "cell.json"))):
        d = os.path.dirname(path)
        out.append((_read(path, {}), _read(os.path.join(d, "quality.json")),
                    _read(os.path.join(d, "manifest.json"))))
    return out


def entry_values(runs, entry, metric):
    """{seed: value} of `entry` (a table Entry) for `metric` on the test split."""
    out = {}
    for (cell, seed), run in runs.items():
        if cell != entry.cell:
            continue
        m = run.test.get(entry.part)
        if m is not None and isinstance(m.get(metric), (int, float)):
            out[seed] = float(m[metric])
    return out


# ------------------------------------------------------------------------------------------
# Convergence (T9).
# ------------------------------------------------------------------------------------------

def validation_curve(run, metric, part=""):
    """[(step, value)] of the run's evaluations on its eval (validation) split."""
    split = run.config.get(part, {}).get("dataset", {}).get("eval_split")
    out = {}
    for rec in run.history.get(part, []):
        if metric in rec and (split is None or rec.get("split") == split):
            out[int(rec["step"])] = float(rec[metric])
    return sorted(out.items())


def convergence(runs, table, metric="AP", fraction_of_final=0.8):
    """Steps to a fixed validation value for T9's rows.

    The threshold is `fraction_of_final` of the lowest mean final validation value among the
    rows (so every row can reach it); a seed that never does counts as its last step plus
    one evaluation interval and is marked censored.

    Returns:
      (threshold or None, {row: {seed: steps}}, {row: {seed: censored}}, {row: {seed: curve}})
    """
    curves, finals = {}, {}
    for (row, _), entry in table.entries.items():
        curves[row] = {}
        for (cell, seed), run in runs.items():
            if cell == entry.cell:
                curve = validation_curve(run, metric, entry.part)
                if curve:
                    curves[row][seed] = curve
        if curves[row]:
            finals[row] = sum(c[-1][1] for c in curves[row].values()) / len(curves[row])
    if not finals or min(finals.values()) <= 0:  # nothing learned: no threshold to reach
        return None, {}, {}, curves
    threshold = fraction_of_final * min(finals.values())
    steps, censored = {}, {}
    for row, by_seed in curves.items():
        steps[row], censored[row] = {}, {}
        for seed, curve in by_seed.items():
            s = stats.first_step_reaching(curve, threshold)
            if s is None:
                interval = curve[-1][0] - curve[-2][0] if len(curve) > 1 else curve[-1][0]
                s, censored[row][seed] = curve[-1][0] + interval, True
            else:
                censored[row][seed] = False
            steps[row][seed] = float(s)
    return threshold, steps, censored, curves


# ------------------------------------------------------------------------------------------
# Tables and findings.
# ------------------------------------------------------------------------------------------

def table_results(runs, table):
    """{(row, column): {"cell", "values", "interval"}} of a table's test metric."""
    metric = PRIMARY[table.task]
    out = {}
    if table.curves:
        _, steps, censored, _ = convergence(runs, table, metric)
        for where in table.entries:
            values = steps.get(where[0], {})
            out[where] = {"cell": table.entries[where].key, "values": values,
                          "censored": censored.get(where[0], {}),
                          "interval": stats.t_interval(list(values.values()), CONFIDENCE)}
        return out
    for where, entry in table.entries.items():
        values = entry_values(runs, entry, metric)
        out[where] = {"cell": entry.key, "values": values,
                      "interval": stats.t_interval(list(values.values()), CONFIDENCE)}
    return out


def _metric_of_entry(entry):
    task = tables.CELLS[entry.cell].task
    return PRIMARY.get(task, "AP")


def check_result(runs, check, steps_table=None):
    """A finding's check: paired differences over seeds, interval and verdict."""
    if check.metric == "steps_to":
        _, steps, _, _ = convergence(runs, steps_table, "AP") if steps_table else (
            None, {}, {}, {})
        by_cell = {}
        for (row, _), entry in (steps_table.entries.items() if steps_table else []):
            by_cell[entry.key] = steps.get(row, {})
        get = lambda e: by_cell.get(e.key, {})  # noqa: E731
    else:
        get = lambda e: entry_values(runs, e, _metric_of_entry(e))  # noqa: E731
    plus = [get(e) for e in check.plus]
    minus = [get(e) for e in check.minus]
    missing = sorted({e.key for e, v in zip(check.plus + check.minus, plus + minus) if not v})
    diffs = stats.paired_differences(plus, minus) if not missing else {}
    interval = stats.t_interval(list(diffs.values()), CONFIDENCE)
    verdict = stats.NOT_RUN if missing or not diffs else stats.verdict(interval,
                                                                     check.direction)
    ran = verdict != stats.NOT_RUN
    p = stats.p_value(list(diffs.values())) if ran else math.nan
    seeds = stats.seeds_for_power(list(diffs.values()), POWER, CONFIDENCE,
                                 MAX_SEEDS_SEARCHED) if ran else None
    return {"label": check.label, "direction": check.direction, "differences": diffs,
            "interval": interval, "verdict": verdict, "missing": missing, "p": p,
            "seeds_for_power": seeds,
            "cells": sorted({e.cell for e in check.plus + check.minus})}


def finding_results(runs):
    """[(finding, [check results], verdict)] for every finding.

    Each check result also carries "holm": its verdict when the finding's checks are tested
    as one family (Holm, family-wise error ALPHA); `holm_verdict` combines those.
    """
    out = []
    for finding in tables.FINDINGS:
        results = [check_result(runs, c, tables.TABLES["T9"]) for c in finding.checks]
        holm = stats.family_verdicts([(r["verdict"], r["p"], r["interval"].mean,
                                       r["direction"]) for r in results], ALPHA)
        for r, v in zip(results, holm):
            r["holm"] = v
        out.append((finding, results, stats.combine([r["verdict"] for r in results])))
    return out


def holm_verdict(results):
    """A finding's verdict from its checks' family-wise (Holm) verdicts."""
    return stats.combine([r["holm"] for r in results])


# ------------------------------------------------------------------------------------------
# Rendering.
# ------------------------------------------------------------------------------------------

def _git_head():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tables.REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt_cell(result, table):
    interval = result["interval"]
    if interval.n == 0:
        return "not run"
    digits = 0 if table.curves else 3
    text = stats.format_interval(interval, digits)
    if any(result.get("censored", {}).values()):
        text += " (censored)"
    return f"{text} (n={interval.n})" if math.isfinite(interval.half_width) else text


def render_table(table, results, runs=None, settings=None):
    """A table in Markdown; with `settings`, a line naming what its rows pre-trained on."""
    metric = "steps" if table.curves else PRIMARY[table.task]
    lines = [f"### {table.key}. {table.title}", "",
             f"Test {metric}" if not table.curves else
             "Steps to the validation-AP threshold (mean ± 95 % interval over seeds)", "",
             "| | " + " | ".join(table.columns) + " |",
             "|---|" + "---|" * len(table.columns)]
    for row in table.rows:
        cells = []
        for col in table.columns:
            r = results.get((row, col))
            cells.append("" if r is None else _fmt_cell(r, table))
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    if table.curves and runs is not None:
        threshold, _, _, curves = convergence(runs, table, "AP")
        if threshold is not None:
            lines += ["", f"Threshold: validation AP {threshold:.4f}."]
        elif any(curves.values()):
            lines += ["", "No threshold: a row's mean final validation AP is 0 (nothing "
                          "learned at this scale)."]
    if table.paper:
        lines += ["", f"*Paper:* {table.paper}"]
    if table.note:
        lines += ["", table.note]
    if settings is not None:
        lines += _pretraining_line(table, settings)
    return lines


def _pretraining_line(table, settings):
    described = [tables.describe_pretraining(n, settings)
                 for n in tables.pretrain_cells_of([table.key])]
    if not described:
        return []
    return ["", "Pre-training: " + "; ".join(
        f"{d['label']} = {d['recipe']} on `{d['corpus']}`" for d in described) + "."]


# In the study's root: whoever runs the study says why cells are missing.
STATUS_NOTE = recording.STATUS_NOTE


def render_status(root, keys, results, settings, seeds=None):
    """## Status: per table, the (cell, seed) results present out of those planned, the
    missing cells by name, and the runner's note (`ROOT/STATUS.md`) on why they are missing."""
    lines = ["## Status", "",
             "| table | results (cell x seed) | cells with every seed | missing or short of seeds |",
             "|---|---:|---:|---|"]
    complete = True
    for key in keys:
        table = tables.TABLES[key]
        want = int(seeds or (1 if settings.smoke else table.seeds))
        have = {where: len(r["values"]) for where, r in results[key].items()}
        full = sum(n >= want for n in have.values())
        short = sorted({f"{results[key][w]['cell']} ({n}/{want})"
                        for w, n in have.items() if n < want})
        complete &= not short
        shown = ", ".join(short[:8]) + (f", ... ({len(short)} in all)" if len(short) > 8
                                          else "")
        lines.append(f"| {key} | {sum(min(n, want) for n in have.values())} / "
                     f"{len(have) * want} | {full} / {len(have)} | {shown or '-'} |")
    note = os.path.join(root, STATUS_NOTE)
    lines.append("")
    if os.path.exists(note):
        with open(note) as f:
            lines += [("**Why cells are missing**" if not complete else
                       "Every cell of every table ran at every seed. **How**") +
                      " (the runner's note, `STATUS.md`):", "", f.read().strip()]
    elif not complete:
        lines.append(f"Cells are missing and `{STATUS_NOTE}` in the study's root says nothing "
                     "about why.")
    else:
        lines.append("Every cell of every table ran at every seed.")
    return lines


def render_pretraining(settings, keys):
    """The header's list of the initialisations: what each pre-training cell learns from."""
    lines = ["- Pre-training (this benchmark's stand-ins for the paper's; each run once and "
             "shared by every seed):"]
    for name in tables.pretrain_cells_of(keys):
        d = tables.describe_pretraining(name, settings)
        lines.append(f"  - **{d['label']}** (`{name}`): {d['recipe']} on `{d['corpus']}`: "
                     f"{d['detail']}.")
    return lines


def render_finding(finding, results, verdict):
    tag = "hypothesis beyond the paper" if finding.beyond else "paper finding"
    lines = [f"### {finding.claim}: **{verdict}**", "",
             f"*{tag}*" + (f"; paper: {finding.paper}" if finding.paper else ""), "",
             "| comparison (paired by seed) | expected | difference, mean ± 95 % interval "
             "[low, high] | n | p | verdict | family-wise (Holm) | seeds for 80 % power |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        iv = r["interval"]
        if r["verdict"] == stats.NOT_RUN:
            diff = "missing: " + ", ".join(r["missing"]) if r["missing"] else "no common seeds"
            lines.append(f"| {r['label']} | {'> 0' if r['direction'] > 0 else '< 0'} | "
                         f"{diff} | 0 | - | not run | not run | - |")
            continue
        if math.isfinite(iv.half_width):
            diff = f"{iv.mean:+.4f} ± {iv.half_width:.4f} [{iv.low:+.4f}, {iv.high:+.4f}]"
        else:
            diff = f"{iv.mean:+.4f} (one seed: no interval)"
        p = f"{r['p']:.3f}" if math.isfinite(r["p"]) else "-"
        need = (r["seeds_for_power"] if r["seeds_for_power"] is not None
                else f"> {MAX_SEEDS_SEARCHED}" if iv.n >= 2 and iv.mean != 0 else "-")
        lines.append(f"| {r['label']} | {'> 0' if r['direction'] > 0 else '< 0'} | "
                     f"{diff} | {iv.n} | {p} | {r['verdict']} | {r['holm']} | {need} |")
    counts = {v: sum(r["verdict"] == v for r in results) for v in stats.VERDICTS}
    lines += ["", "Checks: " + ", ".join(f"{n} {v}" for v, n in counts.items() if n) + "."]
    tested = sum(math.isfinite(r["p"]) for r in results)
    over = {0: "no check has an interval yet", 1: "its one check with an interval"}.get(
        tested, f"Holm over its {tested} checks with an interval")
    lines += [f"Family-wise ({over}): **{holm_verdict(results)}**."]
    return lines


def _tables_of(cells):
    """The tables to name so that `--rows` finds every one of `cells` (each cell's first)."""
    keys = []
    for cell in cells:
        key = next(k for k, t in tables.TABLES.items()
                   if any(e.cell == cell for e in t.entries.values()))
        if key not in keys:
            keys.append(key)
    return keys


def more_seeds(findings):
    """[(check result, seeds)]: the inconclusive checks that at most MAX_SUGGESTED_SEEDS seeds
    would likely decide (POWER at their observed mean and spread), one per set of cells
    (checks of the same cells with another metric, e.g. T9's steps, ask for the most seeds
    any of them needs)."""
    by_cells = {}
    for _, results, _ in findings:
        for r in results:
            need = r["seeds_for_power"]
            if (r["verdict"] != stats.INCONCLUSIVE or need is None
                    or not r["interval"].n < need <= MAX_SUGGESTED_SEEDS):
                continue
            key = tuple(r["cells"])
            if key not in by_cells or need > by_cells[key][1]:
                by_cells[key] = (r, need)
    return list(by_cells.values())


def run_command(settings, cells, seeds):
    """The run.py command that runs the missing seeds (up to `seeds`) of `cells`."""
    # A record holds no checkpoints: run into a study root, resuming from the record.
    where = ([f"--root=DIR --record={_shown(settings.root)}"]
             if recording.is_record(settings.root) else [f"--root={settings.root}"])
    flags = [f"--table={','.join(_tables_of(cells))}", f"--rows={','.join(cells)}",
             f"--seeds={seeds}", *where]
    if settings.dataset != "digit_scenes":
        flags.append(f"--dataset={settings.dataset}")
    if settings.scale != 1.0:
        flags.append(f"--scale={settings.scale:g}")
    if settings.eval_images != tables.default_eval_images(settings.dataset, settings.scale):
        flags.append(f"--eval_images={settings.eval_images}")
    return "python experiments/paper/run.py " + " ".join(flags)


def render_more_seeds(findings, settings):
    """The inconclusive checks that a few more seeds would likely decide, with the command."""
    rows = [f"| {r['label']} | {r['interval'].mean:+.4f} | {r['interval'].n} | {need} | "
            f"`{run_command(settings, r['cells'], need)}` |" for r, need in more_seeds(findings)]
    lines = ["## More seeds", "",
             "The issue asks for more than 3 seeds where a difference is close to its spread. "
             f"These inconclusive checks would exclude 0 with {POWER * 100:.0f} % probability "
             f"at {MAX_SUGGESTED_SEEDS} seeds or fewer **if** their observed mean and spread "
             "were the true ones (a paired t-test's power, noncentral t; "
             "`stats.seeds_for_power`). That is a rough planning number: a mean and a spread "
             "from 2-3 seeds are themselves noisy, it is the power of the check's own 5 % test "
             "(the family-wise test asks for more), and an interval recomputed after adding "
             "seeds because a check was inconclusive is not adjusted for that choice (read it "
             "as a more precise estimate, not a fresh test). The command runs the missing "
             "seeds of the check's cells (finished seeds are skipped). Checks that would need "
             "more are in each finding's last column.", ""]
    if not rows:
        return lines + ["None at this point.", ""]
    return lines + ["| check | difference | seeds now | seeds for 80 % power | command |",
                    "|---|---|---|---|---|", *rows, ""]


def job_wall_s(record):
    """A job's wall time: its processes' as run.py measured them (start-up included), summed
    over resumptions; else the sum of the stages the job timed itself."""
    attempts = record.get("attempts") or []
    if attempts:
        return float(sum(a.get("wall_s", 0.0) for a in attempts))
    return float(sum(record.get("wall_s", {}).values()))


MORE_SEEDS = "more seeds"  # jobs at seeds beyond their table's default (run.py --seeds=N)


def measured_time_by_table(runs, pseudo, table_keys):
    """{table: (jobs, seconds)}: wall time of the jobs each table needs first at its default
    seeds (a shared job counts in the first table that uses it, as in run.py's estimate); jobs
    at seeds beyond that table's default (`--seeds=N` runs) count under MORE_SEEDS."""
    first = {}
    for key in table_keys:
        for entry in tables.TABLES[key].entries.values():
            for name in tables.dependencies(entry.cell):
                first.setdefault(name, key)
    out = {key: [0, 0.0] for key in (*table_keys, MORE_SEEDS)}

    def add(cell, seed, record):
        key = first.get(cell)
        if key not in out:
            return
        if isinstance(seed, int) and seed >= tables.TABLES[key].seeds:
            key = MORE_SEEDS
        out[key][0] += 1
        out[key][1] += job_wall_s(record)

    for run in runs.values():
        add(run.cell, run.seed, run.record)
    for record, _, _ in pseudo:
        seed = record.get("seed")
        add(record.get("cell"), int(seed) if isinstance(seed, (int, float)) else None, record)
    return out


def render(root, out_dir=None, plots=True):
    """Writes REPORT.md, report.json and plots; returns the report.json dict.

    Args:
      root: the study's directory.
      out_dir: where the files go (default: root).
      plots: draw the PNG plots (needs matplotlib).
    """
    import harness  # pylint: disable=g-import-not-at-top  (tables + planning only)
    out_dir = out_dir or root
    os.makedirs(out_dir, exist_ok=True)
    study = _read(os.path.join(root, "study.json"), {})
    runs = load_runs(root)
    pseudo = load_pseudo(root)
    table_results_ = {k: table_results(runs, t) for k, t in tables.TABLES.items()}
    findings = finding_results(runs)
    commits = sorted({r.record.get("git_commit", "unknown") for r in runs.values()})
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    head = _git_head()
    settings = study_settings(root, study)
    dataset = settings.dataset
    keys = [k for k, t in tables.TABLES.items() if dataset in t.datasets]
    lines = ["# Rethinking Pre-training and Self-training: the study, measured", "",
             f"Generated {now} by `python experiments/paper/report.py --root={_shown(root)}` "
             "from the "
             "workdirs' JSON files only.", "",
             f"- Repository at report time: `{head}` (`git rev-parse HEAD`); runs made at: "
             + (", ".join(f"`{c}`" for c in commits) or "none") + ".",
             *render_restored(runs),
             f"- Study: dataset preset `{dataset}`, scale {study.get('scale', '?')}, "
             f"evaluation images {study.get('eval_images') or 'all'}; started with "
             f"`{study.get('command', '?')}`." + (
                 f" **A smoke run** (scale <= {tables.SMOKE_SCALE:g}): it checks the "
                 "plumbing; its numbers and verdicts mean nothing." if settings.smoke else ""),
             *render_pretraining(settings, keys),
             "- Every number is measured on the **test** split (the best checkpoint, pseudo-"
             "label thresholds and all other settings were chosen on `validation`).",
             "- Cells show the mean over seeds ± the half-width of the two-sided **95 % "
             "Student-t interval**, t(0.975, n-1) · s / √n, with n the number of seeds; "
             "\"(n=1)\" has no interval. A comparison is made per seed (paired difference; "
             "difference of differences for interactions) and its interval is over those "
             "differences.",
             "- Verdicts: **reproduced** when the 95 % interval of the paired difference "
             "excludes 0 in the paper's direction, **contradicted** when it excludes 0 the "
             "other way, **inconclusive** otherwise, **not run** when a cell is missing. A "
             "finding is reproduced when every check that ran is, contradicted when any "
             "check is.",
             "- A finding has several checks, so some verdict is likely by chance alone (five "
             "independent checks at 95 % each, none with an effect: 1 - 0.95^5 = 23 % of such "
             "findings would show one). The **family-wise** column tests each "
             "finding's checks as one family with Holm's step-down method (family-wise error "
             "5 % within the finding: the i-th smallest of its m p-values of the paired "
             "t-tests, and every smaller one, must be below 0.05 / (m - j + 1) at its own rank "
             "j); a check still reproduced or contradicted there is not explained by the "
             "number of checks of its finding (the error is not controlled across the "
             "findings).",
             "- **Seeds for 80 % power**: how many seeds the paired t-test would need to "
             "exclude 0 four times in five, if the observed mean difference and spread were "
             "the true ones (noncentral t; a rough planning number, see \"More seeds\", which "
             "lists the inconclusive checks that 10 or fewer might decide, with the command "
             "that runs them).",
             "",
             *render_status(root, keys, table_results_, settings, study.get("seeds")), "",
             "## Findings", ""]
    summary = ["| finding | verdict | checks | family-wise (Holm) |", "|---|---|---|---|"]
    for finding, results, verdict in findings:
        counts = ", ".join(f"{sum(r['verdict'] == v for r in results)} {v}"
                           for v in stats.VERDICTS if any(r['verdict'] == v for r in results))
        claim = finding.claim + (" *(beyond the paper)*" if finding.beyond else "")
        summary.append(f"| {claim} | **{verdict}** | {counts} | {holm_verdict(results)} |")
    lines += summary + [""]
    for finding, results, verdict in findings:
        lines += render_finding(finding, results, verdict) + [""]
    lines += render_more_seeds(findings, settings)
    lines += ["## Tables", ""]
    for key in keys:
        lines += render_table(tables.TABLES[key], table_results_[key], runs, settings) + [""]
    if plots:
        names = write_plots(runs, table_results_, findings, out_dir)
        if names:
            lines += ["## Plots", ""] + [f"![{n}]({n})" for n in names] + [""]
        else:
            lines += ["## Plots", "", "matplotlib is not installed: no plots.", ""]
    lines += render_pseudo(pseudo, runs)
    quality_rows = teacher_quality(runs, root)
    lines += render_teacher_quality(quality_rows)
    lines += render_time(settings, keys, runs, pseudo, harness)
    lines += render_cells(runs, pseudo)
    text = "\n".join(lines) + "\n"
    _write(os.path.join(out_dir, "REPORT.md"), text)
    data = {"generated": now, "git_head": head, "run_commits": commits, "study": study,
            "confidence": CONFIDENCE,
            "tables": {k: {f"{r} | {c}": {"cell": v["cell"],
                                          "values": {str(s): x for s, x in v["values"].items()},
                                          **v["interval"].to_dict()}
                           for (r, c), v in res.items()}
                       for k, res in table_results_.items()},
            "findings": [{"key": f.key, "claim": f.claim, "beyond_paper": f.beyond,
                          "verdict": verdict, "verdict_holm": holm_verdict(results),
                          "paper": f.paper,
                          "checks": [{"label": r["label"], "direction": r["direction"],
                                      "verdict": r["verdict"], "missing": r["missing"],
                                      "p": stats.json_float(r["p"]),
                                      "seeds_for_power": r["seeds_for_power"],
                                      "verdict_holm": r["holm"],
                                      "differences": {str(s): d for s, d in
                                                      r["differences"].items()},
                                      **r["interval"].to_dict()} for r in results]}
                         for f, results, verdict in findings],
            "teacher_quality": [{k: ({str(s): x for s, x in v.items()}
                                     if isinstance(v, dict) else v) for k, v in r.items()}
                                for r in quality_rows],
            "cells": [{"cell": r.cell, "seed": r.seed, "stage": r.stage,
                       "status": r.record.get("status"), "wall_s": r.record.get("wall_s"),
                       "commands": r.record.get("commands"),
                       "git_commit": r.record.get("git_commit"),
                       **({"restored_from": r.record["restored_from"]} if _restored(r) else {}),
                       "test": r.test} for r in runs.values()]}
    _write(os.path.join(out_dir, "report.json"), json.dumps(data, indent=2, default=str))
    return data


def _write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def render_pseudo(pseudo, runs=None):
    """The pseudo labels of every teacher: counts, and their quality at the threshold used
    where the unlabeled pool keeps hidden ground truth (quality.json; pipeline.json for
    pipeline cells)."""
    rows = []
    for record, quality, manifest in pseudo:
        cell = tables.CELLS.get(record.get("cell"))
        rows.append((record.get("spec", {}).get("teacher", "?"),
                     "shared" if cell and cell.shared else record.get("seed"),
                     manifest or {}, quality))
    for run in sorted((runs or {}).values(), key=lambda r: (r.cell, r.seed)):
        st = run.config.get("student", {}).get("self_training", {})
        for rnd in (run.pipeline or {}).get("rounds", []):
            p = {"unlabeled": {"source": st.get("unlabeled", "?"),
                               "split": st.get("unlabeled_split", "")}, **rnd.get("pseudo", {})}
            rows.append((f"{run.cell}/teacher", run.seed, p, p.get("quality")))
    if not rows:
        return []
    lines = ["## Pseudo labels", "",
             "Per teacher and seed: the unlabeled pool, images labelled, labels kept, and "
             "(where the pool keeps hidden ground truth) the labels' quality at the threshold "
             "used (quality.json).", "",
             "| teacher | seed | unlabeled | threshold | images | labels | quality at the "
             "threshold |", "|---|---|---|---|---|---|---|"]
    for teacher, seed, manifest, quality in rows:
        threshold = manifest.get("score_threshold", manifest.get("pixel_threshold"))
        unl = manifest.get("unlabeled", {})
        source = (f"{unl.get('source', '?')} {unl.get('split', '')}" if isinstance(unl, dict)
                  else str(unl or "?"))
        q = _quality_at_threshold(quality, threshold)
        shown = ", ".join(f"{k} {_f(v)}" for k, v in q.items()
                          if k in ("precision", "recall", "AP50", "pixel_accuracy", "mIoU",
                                   "accuracy", "kept_fraction"))
        lines.append(f"| {teacher} | {seed} | {source} | {_f(threshold)} | "
                     f"{manifest.get('num_images', '')} | {_labels_kept(manifest)} | {shown} |")
    return lines + [""]


QUALITY_KEY = {"detection": "precision", "segmentation": "mIoU"}  # of the pseudo labels
# The self-training recipes themselves (one cell per teacher); variants of the student that
# share a teacher (loss norm off, joint + pseudo, other pools) are shown but not correlated.
PLAIN_SELF_TRAINING = ("self-training", "pipeline")


def _pseudo_dir(root, path):
    """A student's `self_training.pseudo_labels`, or the same directory under this root (a
    study copied elsewhere keeps its relative layout)."""
    if path and os.path.isdir(path):
        return path
    moved = os.path.join(root, "pseudo", *path.rstrip("/").split("/")[-2:]) if path else ""
    return moved if moved and os.path.isdir(moved) else None


def teacher_quality(runs, root):
    """Per self-trained cell: its teachers' test metric, their pseudo labels' quality at the
    threshold used (on the pool's hidden ground truth), and the student's gain over its
    teacher, per seed.

    Returns:
      [{"cell", "task", "teacher", "quality" ({seed: value}), "recall" ({seed: value},
      detection), "gain" ({seed: student - teacher}), "plain" (a `PLAIN_SELF_TRAINING`
      cell)}], cells in name order.
    """
    by_cell = {}
    for run in sorted(runs.values(), key=lambda r: (r.cell, r.seed)):
        cell = tables.CELLS.get(run.cell)
        if cell is None or cell.task not in QUALITY_KEY:
            continue
        metric, key = PRIMARY[cell.task], QUALITY_KEY[cell.task]
        if run.pipeline:
            teacher_m = run.test.get("teacher", {}).get(metric)
            student_m = run.test.get("student", {}).get(metric)
            rounds = run.pipeline.get("rounds") or [{}]
            manifest = rounds[0].get("pseudo", {})
            quality = manifest.get("quality")
        elif cell.teacher and (cell.teacher, run.seed) in runs:
            teacher_m = runs[(cell.teacher, run.seed)].test.get("", {}).get(metric)
            student_m = run.test.get("", {}).get(metric)
            d = _pseudo_dir(root, run.config.get("", {}).get("self_training", {}).get(
                "pseudo_labels", ""))
            if d is None:
                continue
            manifest = _read(os.path.join(d, "manifest.json"), {})
            quality = _read(os.path.join(d, "quality.json"))
        else:
            continue
        q = _quality_at_threshold(quality, manifest.get("score_threshold",
                                                        manifest.get("pixel_threshold")))
        if teacher_m is None or student_m is None or q.get(key) is None:
            continue
        row = by_cell.setdefault(run.cell, {
            "cell": run.cell, "task": cell.task, "teacher": {}, "quality": {}, "recall": {},
            "gain": {}, "plain": cell.labels.get("method") in PLAIN_SELF_TRAINING})
        row["teacher"][run.seed] = float(teacher_m)
        row["quality"][run.seed] = float(q[key])
        if q.get("recall") is not None:
            row["recall"][run.seed] = float(q["recall"])
        row["gain"][run.seed] = float(student_m) - float(teacher_m)
    return [by_cell[c] for c in sorted(by_cell)]


def rank_correlation(xs, ys):
    """Spearman's rho of two equal-length sequences (SciPy); nan for fewer than 3 pairs."""
    if len(xs) < 3:
        return math.nan
    from scipy import stats as sp  # pylint: disable=g-import-not-at-top
    return float(sp.spearmanr(xs, ys).statistic)


def render_teacher_quality(rows):
    """Does the student gain where its teacher labels well? (descriptive, beyond the paper)"""
    if not rows:
        return []
    lines = ["## Teacher quality and the student's gain", "",
             "Beyond the paper, descriptive (no verdict): for every self-trained cell, the "
             "quality of its teachers' pseudo labels at the threshold used (scored on the "
             "unlabeled pool's hidden ground truth: box precision for detection, mIoU for "
             "segmentation), the teachers' test metric, and the student's test gain over its "
             "own teacher (mean ± 95 % interval over seeds). Spearman's rank correlation "
             "across the plain self-training cells of a task (one per teacher; the variants "
             "marked * share a teacher with one of them) says whether the gain follows the "
             "labels' quality.", ""]
    for task in ("detection", "segmentation"):
        mine = sorted((r for r in rows if r["task"] == task),
                      key=lambda r: _mean(r["quality"]))
        if not mine:
            continue
        metric, key = PRIMARY[task], QUALITY_KEY[task]
        lines += [f"**{task}** (pseudo-label {key}; test {metric})", "",
                  f"| cell | seeds | labels' {key} | "
                  + ("labels' recall | " if task == "detection" else "")
                  + f"teacher {metric} | student - teacher |",
                  "|---|---|---|" + ("---|" if task == "detection" else "") + "---|---|"]
        for r in mine:
            gain = stats.t_interval(list(r["gain"].values()), CONFIDENCE)
            recall = (f" {_f(_mean(r['recall']))} |" if task == "detection" else "")
            lines.append(f"| {r['cell']}{'' if r['plain'] else ' *'} | {len(r['gain'])} | "
                         f"{_f(_mean(r['quality']))} |"
                         f"{recall} {_f(_mean(r['teacher']))} | "
                         f"{stats.format_interval(gain, 4, signed=True)} |")
        plain = [r for r in mine if r["plain"]]
        rho = rank_correlation([_mean(r["quality"]) for r in plain],
                               [_mean(r["gain"]) for r in plain])
        if math.isfinite(rho):
            lines += ["", f"Spearman's rho (labels' {key}, mean gain) over the {len(plain)} "
                          f"plain self-training cells: **{rho:+.2f}**."]
        lines.append("")
    return lines


def _mean(values):
    return math.fsum(values.values()) / len(values) if values else math.nan


def _labels_kept(manifest):
    """'1.500 boxes/image', '0.420 of pixels' or '950 of 1000 images' (classification: an
    image below the threshold gets no label)."""
    if "boxes_per_image" in manifest:
        return f"{_f(manifest.get('boxes_per_image'))} boxes/image"
    if "kept_fraction" in manifest:
        return f"{_f(manifest.get('kept_fraction'))} of pixels"
    if manifest.get("task") == "classification":
        return f"{manifest.get('num_images')} of {manifest.get('num_images_seen')} images"
    return ""


def _quality_at_threshold(quality, threshold):
    """The quality.json row of `threshold` ({} if there is none)."""
    if not isinstance(quality, dict) or threshold is None:
        return {}
    for row in quality.get("thresholds") or []:
        if isinstance(row, dict) and row.get("threshold") is not None and math.isclose(
                float(row["threshold"]), float(threshold)):
            return row
    return {}


def _f(value):
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


def study_settings(root, study):
    """The harness's settings a study ran with (study.json; the defaults where it has none)."""
    return tables.Settings(root=root, dataset=study.get("dataset", "digit_scenes"),
                           scale=float(study.get("scale", 1.0)),
                           eval_images=int(study.get("eval_images") or 0))


def render_time(settings, keys, runs, pseudo, harness):
    measured = measured_time_by_table(runs, pseudo, keys)
    lines = ["## Time", "",
             "Wall time of the jobs each table needed first at its default seeds (a shared "
             "pre-training or teacher run counts once, in the first table that uses it; runs "
             "at more seeds than that, `--seeds=N`, count on their own row), summed over "
             "resumptions, against run.py's estimate for a quiet 2-core CPU at this scale "
             "(each table's default seeds).", "",
             "| table | jobs run | measured | estimate (all its jobs) |",
             "|---|---|---|---|"]
    estimate = {}
    try:
        jobs = harness.plan(settings, keys)
        estimate = {k: s for k, _, s in harness.estimate_by_table(jobs, settings, keys)}
    except (ValueError, KeyError):
        pass
    total_m = total_e = 0.0
    for key in keys:
        n, s = measured[key]
        e = estimate.get(key, math.nan)
        total_m += s
        total_e += e if math.isfinite(e) else 0.0
        lines.append(f"| {key} | {n} | {harness.format_duration(s)} | "
                     f"{harness.format_duration(e) if math.isfinite(e) else '?'} |")
    n, s = measured[MORE_SEEDS]
    if n:
        total_m += s
        lines.append(f"| {MORE_SEEDS} (beyond a table's default, `--seeds=N`) | {n} | "
                     f"{harness.format_duration(s)} | - |")
    lines.append(f"| all | {sum(n for n, _ in measured.values())} | "
                 f"{harness.format_duration(total_m)} | {harness.format_duration(total_e)} |")
    return lines + [""]


def _shown(path):
    """PATH relative to the working directory when it lies under it (a record in the
    repository), else as it is."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _restored(run):
    return bool(run.record.get("restored_from"))


def render_restored(runs):
    """The header's line on job records restored from an earlier report.json
    (`recording.restore_from_report`): what they keep and what they lost."""
    sources = sorted({r.record["restored_from"] for r in runs.values() if _restored(r)})
    if not sources:
        return []
    n = sum(_restored(r) for r in runs.values())
    return [f"- **{n} of the {len(runs)} job records were restored** from "
            + "; ".join(f"`{s}`" for s in sources) + " (`record.py --from_report`), the "
            "study's root having been lost: they keep each job's record and test metrics, "
            "so every test number and check that uses them is as first reported; they lost "
            "the validation curves (T9) and the pseudo-label records (teacher quality), which "
            "are shown only for jobs run again. Marked \"(restored)\" under Cells."]


def render_cells(runs, pseudo):
    lines = ["## Cells", "",
             "Every workdir: status, wall time, commit, and the commands that reproduce it "
             "(`python -m rethink_tf...` from the repository root; the harness ran the same "
             "calls in `experiments/paper/cell.py`).", "",
             "| cell | seed | status | wall | test | commit |", "|---|---|---|---|---|---|"]
    for run in sorted(runs.values(), key=lambda r: (r.cell, r.seed)):
        wall = job_wall_s(run.record)
        test = "; ".join(
            f"{part + ' ' if part else ''}{k} {m[k]:.4f}" for part, m in run.test.items()
            for k in ("AP", "mIoU") if isinstance(m.get(k), (int, float)))
        if run.stage == "pretrain":
            m = run.record.get("metrics", {})
            test = f"top1 {m['top1']:.4f} (validation)" if "top1" in m else ""
        lines.append(f"| {run.cell} | {'shared' if run.stage == 'pretrain' else run.seed} | "
                     f"{run.record.get('status')}{' (restored)' if _restored(run) else ''} | "
                     f"{wall / 60:.1f} min | {test} | "
                     f"`{str(run.record.get('git_commit', ''))[:12]}` |")
    lines += ["", "<details><summary>Commands</summary>", ""]
    for run in sorted(runs.values(), key=lambda r: (r.cell, r.seed)):
        lines += [f"**{run.cell}**, seed {run.seed}:", "```"]
        lines += run.record.get("commands") or ["(not recorded)"]
        lines += ["```", ""]
    for record, _, _ in pseudo:
        lines += [f"**pseudo labels of {record.get('spec', {}).get('teacher', '?')}**, seed "
                  f"{record.get('seed')}:", "```"]
        lines += record.get("commands") or ["(not recorded)"]
        lines += ["```", ""]
    lines += ["</details>", ""]
    return lines


# ------------------------------------------------------------------------------------------
# Plots.
# ------------------------------------------------------------------------------------------

def write_plots(runs, results, findings, out_dir):
    """The four PNGs (Agg backend); returns their file names ([] without matplotlib)."""
    try:
        import matplotlib  # pylint: disable=g-import-not-at-top
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    except ImportError:
        return []
    names = []
    for name, fn in (("ap_vs_fraction.png", _plot_fraction),
                     ("ap_vs_augmentation.png", _plot_augmentation),
                     ("self_training_gain.png", _plot_gain),
                     ("convergence.png", _plot_convergence)):
        fig = fn(plt, runs, results, findings)
        if fig is not None:
            fig.savefig(os.path.join(out_dir, name), dpi=110, bbox_inches="tight")
            plt.close(fig)
            names.append(name)
    return names


def _err(interval):
    return interval.half_width if math.isfinite(interval.half_width) else 0.0


def _plot_fraction(plt, runs, results, findings):
    del runs, findings
    if not any(r["interval"].n for r in results["T2"].values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    xs = [0.2, 0.5, 1.0]
    for ax, aug in zip(axes, ("s1", "s4")):
        for init in ("rand", "imagenet", "imagenet_plus"):
            row = f"{tables.INITS[init]}, {tables.AUG_LABEL[aug]}"
            pts = [(x, results["T2"].get((row, tables.FRAC_LABEL[x]))) for x in xs]
            pts = [(x, r["interval"]) for x, r in pts if r and r["interval"].n]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                            yerr=[_err(p[1]) for p in pts], marker="o", capsize=3,
                            label=tables.INITS[init])
        ax.set_title(f"{tables.AUG_LABEL[aug]}")
        ax.set_xlabel("labelled fraction")
        ax.set_xticks(xs)
    axes[0].set_ylabel("test AP (mean ± 95 % CI)")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle("AP vs label fraction per initialisation (T2)")
    return fig


def _plot_augmentation(plt, runs, results, findings):
    del runs, findings
    if not any(r["interval"].n for r in results["T3"].values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = list(range(1, 5))
    for i, init in enumerate(("rand", "imagenet", "imagenet_plus")):
        color = f"C{i}"
        for suffix, style in (("", "-"), (" + self-training", "--")):
            row = tables.INITS[init] + suffix
            pts = [(x, results["T3"].get((row, tables.AUG_LABEL[f"s{x}"]))) for x in xs]
            pts = [(x, r["interval"]) for x, r in pts if r and r["interval"].n]
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1].mean for p in pts],
                            yerr=[_err(p[1]) for p in pts], marker="o", capsize=3,
                            linestyle=style, color=color, label=row)
    ax.set_xticks(xs, [tables.AUG_LABEL[f"s{x}"] for x in xs])
    ax.set_ylabel("test AP (mean ± 95 % CI)")
    ax.set_title("AP vs augmentation strength per initialisation (T1, T3)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return fig


def _plot_gain(plt, runs, results, findings):
    del runs, results
    checks = next((r for f, r, _ in findings if f.key == "self_training_helps"), [])
    checks = [c for c in checks if c["verdict"] != stats.NOT_RUN]
    if not checks:
        return None
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(4, len(checks)) + 1))
    ys = list(range(len(checks)))
    ax.barh(ys, [c["interval"].mean for c in checks],
            xerr=[_err(c["interval"]) for c in checks], capsize=3,
            color=["C2" if c["verdict"] == stats.REPRODUCED else
                   "C3" if c["verdict"] == stats.CONTRADICTED else "C7" for c in checks])
    # A cell with fewer than 2 seeds has no interval: say so instead of a bar without whiskers.
    ax.set_yticks(ys, [_gain_label(c["label"]) + ("" if c["interval"].n >= 2 else
                                                   f" (n={c['interval'].n}, no interval)")
                       for c in checks], fontsize=7)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("student - teacher, test AP (mean ± 95 % CI, paired by seed)")
    ax.set_title("Self-training gain per cell (T3, T4)")
    return fig


def _gain_label(label):
    """'ImageNet + self-training - ImageNet at Augment-S4, 100 %' -> 'ImageNet, Augment-S4,
    100 %'."""
    if " + self-training - " in label and " at " in label:
        return f"{label.split(' + self-training - ')[0]}, {label.split(' at ', 1)[1]}"
    return label


def _plot_convergence(plt, runs, results, findings):
    del results, findings
    threshold, _, _, curves = convergence(runs, tables.TABLES["T9"], "AP")
    if not any(curves.values()):
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (row, by_seed) in enumerate(curves.items()):
        if not by_seed:
            continue
        steps = sorted({s for c in by_seed.values() for s, _ in c})
        means, lows, highs = [], [], []
        for s in steps:
            vals = [dict(c)[s] for c in by_seed.values() if s in dict(c)]
            means.append(sum(vals) / len(vals))
            lows.append(min(vals))
            highs.append(max(vals))
        ax.plot(steps, means, marker="o", color=f"C{i}", label=f"{row} (n={len(by_seed)})")
        ax.fill_between(steps, lows, highs, color=f"C{i}", alpha=0.15)
    if threshold is not None:
        ax.axhline(threshold, color="k", ls=":", lw=0.8, label="threshold")
    ax.set_xlabel("step")
    ax.set_ylabel("validation AP (mean; band: min-max over seeds)")
    ax.set_title("Convergence per initialisation (T9, Augment-S4)")
    ax.legend(fontsize=8)
    return fig
