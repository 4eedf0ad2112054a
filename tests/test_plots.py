"""The report's plots: valid PNGs whose plotted data, read back from the figures' artists, is results.json's."""

import json
import re
import shutil
import statistics
import subprocess
import sys

import numpy as np
import pytest
from huggingface_hub.utils import filter_repo_objects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.image import imread

from gpt_tickets.cli import main
from gpt_tickets.config import load_config
from gpt_tickets.lottery import find_ticket, run_branch
from gpt_tickets.lottery.combine import prepare, report
from gpt_tickets.lottery.report_plots import legend_label
from gpt_tickets.lottery.results import BranchResult, RoundResult
from gpt_tickets.lottery.stability import STABLE_BARRIER, InterpolationResult, loss_barrier
from gpt_tickets.reporting.plots import (
    Heatmap,
    OverlapPlot,
    PerplexityPlot,
    Point,
    Series,
    Spread,
    StabilityPlot,
)
from gpt_tickets.sparsity.masks import Mask, mask_checksum
from gpt_tickets.sparsity.report import sparsity_report
from gpt_tickets.tickets.hub import TICKET_FILE_PATTERNS

from .conftest import MICRO, error_lines

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("perplexity_vs_sparsity.png", "sparsity_heatmap.png", "mask_overlap.png", "stability.png")
KINDS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@pytest.fixture(scope="module")
def seed_1_run(tmp_path_factory):
    """A replicate of ``micro_run`` (seed 0) with seed 1 and no controls."""
    root = tmp_path_factory.mktemp("seed_1_run") / "run"
    find_ticket(load_config(None, [*MICRO, "--seed", "1", "--controls", "[]", "--output_dir", str(root)]))
    return root


# ------------------------------------------------------------------------------------------------ run helpers


def results(run) -> dict:
    """results.json, read by hand."""
    return json.loads((run / "results.json").read_text())


def remaining(sparsity: float) -> float:
    return 100 * (1 - sparsity)


def round_mask(run, r: int) -> Mask:
    return Mask.load(run / f"round_{r}" / "mask.safetensors")


def add_branch(run, name: str, params: dict, ppl: float, mask: Mask | None = None, evaluations=()) -> BranchResult:
    """A finished branch written by hand (digest-checked result, and its mask with the checksum it records)."""
    base = RoundResult.load(run / f"round_{params['round']}" / "result.json").to_dict()
    folder = run / "branches" / name / "-".join(f"{k}_{v}" for k, v in params.items())
    folder.mkdir(parents=True)
    if mask is not None:
        mask.save(folder / "mask.safetensors")
        base.update(sparsity=sparsity_report(mask, "gpt2").overall, mask_checksum=mask_checksum(mask))
    result = BranchResult(**{**base, "val_perplexity": ppl}, branch=name, params=params, evaluations=list(evaluations))
    result.save(folder / "result.json")
    return result


def add_curve(run, rewind: int, val_nll: list[float], seeds=(1, 2)) -> InterpolationResult:
    """A stability curve as ``stability.run_stability`` saves it (round 2)."""
    n = len(val_nll)
    curve = InterpolationResult(
        round=2,
        rewind=rewind,
        seeds=list(seeds),
        alphas=[i / (n - 1) for i in range(n)],
        val_nll=val_nll,
        val_perplexity=[float(np.exp(v)) for v in val_nll],
        barrier=loss_barrier(val_nll),
    )
    folder = run / "stability" / "round_2" / f"rewind_{rewind}"
    folder.mkdir(parents=True, exist_ok=True)
    curve.save(folder / f"interpolation-seeds_{seeds[0]}_{seeds[1]}-points_{n}.json")
    return curve


def evaluations(*ppls: float) -> list[dict]:
    return [{"steps": 8 * (j + 1), "val_perplexity": p, "val_nll": float(np.log(p))} for j, p in enumerate(ppls)]


@pytest.fixture(scope="module")
def full_run(micro_run, tmp_path_factory):
    """micro_run (random_reinit and random_prune at round 2) plus, by hand: dense_long at two seeds (and one from
    round 1, whose evaluations repeat seed 1's), a one-shot baseline at rounds 1 and 2 with its own masks, and
    stability curves at rewind steps 0 and 3 (and a 3-point curve of the same copies as the 5-point one)."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(micro_run, run)
    shutil.rmtree(run / "report")
    add_branch(run, "dense_long", {"round": 2, "seed": 1}, 200.0, evaluations=evaluations(300.0, 250.0, 200.0))
    add_branch(run, "dense_long", {"round": 2, "seed": 2}, 210.0, evaluations=evaluations(310.0, 260.0, 210.0))
    add_branch(run, "dense_long", {"round": 1, "seed": 1}, 250.0, evaluations=evaluations(300.0, 250.0))
    add_branch(run, "oneshot_magnitude", {"round": 1, "seed": 1}, 400.0, mask=round_mask(run, 1))
    add_branch(run, "oneshot_magnitude", {"round": 2, "seed": 1}, 500.0, mask=round_mask(run, 1))
    add_curve(run, 0, [4.0, 4.3, 4.6, 4.3, 4.1])
    add_curve(run, 0, [4.0, 4.9, 4.1])  # the same copies, fewer points: not a second measurement
    add_curve(run, 3, [4.0, 4.005, 4.01, 4.004, 4.002])
    return run


def plots_of(run_dirs, tmp_path) -> dict:
    prepared = prepare(run_dirs, out=tmp_path / "out")
    return {type(p): p for p in prepared.plots}


def errorbars(ax) -> dict[str, ErrorbarContainer]:
    return {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}


def xy(container: ErrorbarContainer) -> tuple[list[float], list[float]]:
    line = container.lines[0]
    return list(line.get_xdata()), list(line.get_ydata())


def whiskers(container: ErrorbarContainer) -> list[tuple[float, float]]:
    """(low, high) of each drawn bar (bars of one sample are NaN and not drawn)."""
    (collection,) = container.lines[2]
    return [(seg[0][1], seg[1][1]) for seg in collection.get_segments() if len(seg) and not np.isnan(seg).any()]


def line(ax, label: str):
    (found,) = [line for line in ax.get_lines() if line.get_label() == label]
    return found


def bars(ax) -> list[tuple[str, float]]:
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    vertical = container.orientation == "vertical"
    labels = [t.get_text() for t in (ax.get_xticklabels() if vertical else ax.get_yticklabels())]
    sizes = [p.get_height() if vertical else p.get_width() for p in container.patches]
    return list(zip(labels, sizes, strict=True))


# ---------------------------------------------------------------------------------------------------- files


def test_report_writes_valid_pngs_of_the_figures_size_and_links_each(full_run, tmp_path):
    summary, path = report([full_run], out=tmp_path / "out")
    drawn = {p.file: p for p in plots_of([full_run], tmp_path / "again").values()}
    assert sorted(p.file for p in summary.plots) == sorted(PLOTS) == sorted(drawn)
    text = path.read_text()
    for name in PLOTS:
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE)
        figure = drawn[name].figure()
        height, width = (round(v) for v in figure.get_size_inches()[::-1] * figure.dpi)
        assert imread(tmp_path / "out" / name).shape == (height, width, 4) == (675, 1050, 4)
        assert f"]({name})" in text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([*PLOTS, "report.md"])  # no temporaries


# ------------------------------------------------------------------------------------- perplexity vs sparsity


def test_perplexity_plot_is_results_json(full_run, tmp_path):
    ax = plots_of([full_run], tmp_path)[PerplexityPlot].figure().axes[0]
    series = errorbars(ax)
    rounds = results(full_run)["rounds"]
    x = [remaining(r["sparsity"]) for r in rounds]
    assert xy(series["ticket (IMP rounds)"]) == (x, [r["val_perplexity"] for r in rounds])
    assert whiskers(series["ticket (IMP rounds)"]) == []  # one seed: no bar
    assert list(line(ax, "dense, same steps (round 0)").get_ydata()) == [rounds[0]["val_perplexity"]] * 2

    # dense_long: evaluation j at round j's remaining share, over seeds (round 1's repeats seed 1: counted once)
    long_x, long_y = xy(series["dense trained as long as the ticket (dense_long)"])
    assert long_x == x and long_y == [statistics.mean(v) for v in ((300.0, 310.0), (250.0, 260.0), (200.0, 210.0))]
    assert whiskers(series["dense trained as long as the ticket (dense_long)"]) == [(300, 310), (250, 260), (200, 210)]

    for branch in results(full_run)["branches"]:  # the controls find ran (one seed each here)
        bx, by = xy(series[branch["branch"]])
        assert (bx, by) == ([remaining(branch["sparsity"])], [branch["val_perplexity"]])
    oneshot = [BranchResult.load(p) for p in sorted(full_run.glob("branches/oneshot_magnitude/*/result.json"))]
    assert xy(series["oneshot_magnitude"]) == ([remaining(b.sparsity) for b in oneshot], [400.0, 500.0])
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()


def test_replicate_runs_show_the_mean_and_min_max(micro_run, seed_1_run, tmp_path):
    figure = plots_of([micro_run, seed_1_run], tmp_path)[PerplexityPlot].figure()
    ticket = errorbars(figure.axes[0])["ticket (IMP rounds)"]
    a, b = results(micro_run)["rounds"], results(seed_1_run)["rounds"]
    pairs = [(ra["val_perplexity"], rb["val_perplexity"]) for ra, rb in zip(a, b, strict=True)]
    sparsities = [(ra["sparsity"], rb["sparsity"]) for ra, rb in zip(a, b, strict=True)]
    assert xy(ticket)[1] == [statistics.mean(p) for p in pairs]
    assert xy(ticket)[0] == [remaining(statistics.mean(s)) for s in sparsities]
    drawn = [v for bar in whiskers(ticket) for v in bar]
    assert drawn == pytest.approx([v for p in pairs for v in (min(p), max(p))], rel=1e-12, abs=0)
    assert "min–max" in figure.legends[0].get_title().get_text()


def test_legend_and_tick_labels_cover_nothing(full_run, tmp_path):
    for plot in plots_of([full_run], tmp_path).values():
        figure = plot.figure()
        renderer = FigureCanvasAgg(figure).get_renderer()
        figure.draw(renderer)
        for legend in figure.legends:
            box = legend.get_window_extent(renderer)
            assert 0 <= box.x0 and box.x1 <= figure.bbox.width, plot.file  # not cut off at the figure's edges
            assert not any(box.overlaps(ax.get_window_extent(renderer)) for ax in figure.axes), plot.file
            titles = [ax.title.get_window_extent(renderer) for ax in figure.axes if ax.get_title()]
            assert not any(box.overlaps(title) for title in titles), plot.file
        for ax in figure.axes:
            labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
            assert not any(p.overlaps(q) for i, p in enumerate(labels) for q in labels[i + 1 :]), plot.file


# ------------------------------------------------------------------------------------------- sparsity heatmap


def test_heatmap_is_the_final_masks_sparsity_per_layer_and_kind(full_run, tmp_path):
    plot = plots_of([full_run], tmp_path)[Heatmap]
    ax = plot.figure().axes[0]
    report_ = sparsity_report(round_mask(full_run, 2), "gpt2")
    final = results(full_run)["rounds"][-1]
    columns = [t.get_text() for t in ax.get_xticklabels()]
    assert columns == [*KINDS, "attention (all)", "MLP (all)"]
    expected = [
        [report_.per_weight[f"transformer.h.{layer}.{kind}.weight"] for kind in KINDS]
        + [final["per_layer_sparsity"][str(layer)][g] for g in ("attention", "mlp")]
        for layer in range(2)
    ]
    assert np.asarray(ax.images[0].get_array()).tolist() == expected
    assert [t.get_text() for t in ax.texts] == [f"{v:.1%}" for row in expected for v in row]


# ---------------------------------------------------------------------------------------------- mask overlap


def jaccard_by_hand(a: Mask, b: Mask) -> float:
    both = sum(int(np.logical_and(a[n].numpy(), b[n].numpy()).sum()) for n in a)
    either = sum(int(np.logical_or(a[n].numpy(), b[n].numpy()).sum()) for n in a)
    return both / either


def test_overlap_of_consecutive_rounds_is_the_share_kept_and_branches_are_counted_by_hand(full_run, tmp_path):
    left, right = plots_of([full_run], tmp_path)[OverlapPlot].figure().axes
    masks = [round_mask(full_run, r) for r in range(3)]
    assert bars(left) == [(f"{r - 1}→{r}", masks[r].num_remaining() / masks[r - 1].num_remaining()) for r in (1, 2)]
    random_prune = Mask.load(next(full_run.glob("branches/random_prune/*/mask.safetensors")))
    assert bars(right) == [
        ("oneshot_magnitude", masks[2].num_remaining() / masks[1].num_remaining()),  # its mask is round 1's
        ("random_prune", jaccard_by_hand(masks[2], random_prune)),
        ("random_reinit", 1.0),  # the ticket's own mask
    ]
    assert 0 < jaccard_by_hand(masks[2], random_prune) < 0.5


def test_a_branch_mask_that_is_not_its_results_is_refused(full_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    other = next(run.glob("branches/random_prune/*/mask.safetensors"))
    shutil.copyfile(run / "round_1" / "mask.safetensors", other)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"{other} is not the mask its branch finished with" in err and len(error_lines(err)) == 1
    assert not (run / "report").exists()


# ---------------------------------------------------------------------------------------------------- stability


def test_stability_plot_is_the_saved_curves(full_run, tmp_path):
    left, right = plots_of([full_run], tmp_path)[StabilityPlot].figure().axes
    saved = full_run.glob("stability/round_2/rewind_*/interpolation-seeds_1_2-points_5.json")
    curves = {c.rewind: c for c in map(InterpolationResult.load, saved)}
    lines = errorbars(left)
    assert sorted(lines) == ["k = 0", "k = 3"]
    for k, curve in curves.items():
        assert xy(lines[f"k = {k}"]) == (curve.alphas, curve.val_nll)
    assert xy(errorbars(right)["barrier, round 2"]) == ([0, 3], [curves[0].barrier, curves[3].barrier])
    assert curves[0].barrier == pytest.approx(0.55) and curves[3].barrier < STABLE_BARRIER
    assert list(line(right, f"threshold {STABLE_BARRIER:g} nats").get_ydata()) == [STABLE_BARRIER] * 2
    star = line(right, "recommended k = 3")
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([3], [curves[3].barrier])


def test_pure_plots_take_typed_data():
    """No run needed: a series of two seeds is drawn at its mean with a min..max bar."""
    ticket = Series("ticket (IMP rounds)", (Point(100.0, Spread((10.0, 14.0))), Point(50.0, Spread((9.0,)))))
    figure = PerplexityPlot(ticket, Spread((12.0, 13.0)), None, ()).figure()
    container = errorbars(figure.axes[0])["ticket (IMP rounds)"]
    assert xy(container) == ([100.0, 50.0], [12.0, 9.0]) and whiskers(container) == [(10.0, 14.0)]


# ------------------------------------------------------------------------------------------------------ missing


def test_a_run_without_branches_says_what_is_missing_and_plots_the_rest(micro_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    shutil.rmtree(run / "branches")
    assert main(["report", str(run)]) == 0
    text = (run / "report" / "report.md").read_text()
    missing = text.split("## Missing")[1].split("## Every seed")[0]
    for command in (
        f"`gpt-tickets branch {run} random_prune`",
        f"`gpt-tickets branch {run} random_reinit`",
        f"`gpt-tickets branch {run} dense_long`",
        f"`gpt-tickets branch {run} wanda --round all`",
        f"`gpt-tickets branch {run} oneshot_magnitude --round all`",
        f"`gpt-tickets stability {run} --rewind-steps 0,1,2,3,4`",
    ):
        assert command in missing
    written = sorted(p.name for p in (run / "report").glob("*.png"))
    assert written == sorted(PLOTS[:3])  # no stability results: that plot alone is left out
    assert sorted(re.findall(r"\]\(([^)]+\.png)\)", text)) == written
    assert capsys.readouterr().out.rstrip().endswith(f"report: {run / 'report' / 'report.md'}")


def test_a_run_with_only_round_0_plots_it_and_names_the_rest(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    for folder in ("round_1", "round_2", "branches", "report"):
        shutil.rmtree(run / folder)
    summary, path = report([run])
    assert [p.file for p in summary.plots] == ["perplexity_vs_sparsity.png"]
    assert any("rounds 1..2 are not finished" in m for m in summary.missing)
    assert any(m.startswith("sparsity_heatmap.png is not drawn") for m in summary.missing)
    assert sorted(p.name for p in path.parent.iterdir()) == ["perplexity_vs_sparsity.png", "report.md"]


def test_report_into_a_file_is_one_line_exit_2(micro_run, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a folder")
    assert main(["report", str(micro_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == len(err.strip().splitlines()) == 1 and "is a file; choose a directory" in err
    assert out.read_text() == "not a folder"


def test_a_stale_plot_is_removed_with_its_link(full_run, micro_run, tmp_path):
    out = tmp_path / "out"
    report([full_run], out=out)
    assert (out / "stability.png").is_file()
    summary, path = report([micro_run], out=out)  # no stability results
    assert not (out / "stability.png").exists() and "stability.png)" not in path.read_text()


# --------------------------------------------------------------------------------------------- find and ticket


def test_find_writes_the_report_and_the_ticket_embeds_its_plots(micro_run):
    folder, ticket = micro_run / "report", micro_run / "ticket"
    pngs = sorted(p.name for p in folder.glob("*.png"))
    assert pngs == sorted(PLOTS[:3])
    assert sorted(p.name for p in (ticket / "plots").iterdir()) == pngs
    assert all((ticket / "plots" / n).read_bytes() == (folder / n).read_bytes() for n in pngs)
    card = (ticket / "README.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card)
    assert sorted(links) == [f"plots/{n}" for n in pngs] and all((ticket / link).is_file() for link in links)


def test_find_prints_where_the_report_is(micro, capsys):
    assert main(["find", *micro, "--prune.rounds", "1", "--controls", "[]"]) == 0
    out = capsys.readouterr().out
    run = micro[micro.index("--output_dir") + 1]
    assert f"report: {run}/report/report.md" in out and f"ticket: {run}/ticket" in out


def test_plotting_never_loads_pyplot(micro_run, tmp_path):
    """Figures are rendered by the Agg canvas alone: no GUI backend, no global pyplot state, on any node."""
    code = (
        "import sys; from gpt_tickets.lottery.combine import report; "
        f"report([{str(micro_run)!r}], out={str(tmp_path / 'out')!r}); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_the_plots_travel_with_the_ticket_to_the_hub(micro_run):
    """What push uploads and download fetches (the same allow-list) holds every plot the card links."""
    ticket = micro_run / "ticket"
    files = [p.relative_to(ticket).as_posix() for p in ticket.rglob("*") if p.is_file()]
    sent = set(filter_repo_objects(files, allow_patterns=TICKET_FILE_PATTERNS))
    assert {f"plots/{name}" for name in PLOTS[:3]} <= sent and "README.md" in sent


def test_one_shot_baselines_at_every_round_are_a_series_and_their_masks_are_compared(micro_run, tmp_path):
    """The real branches (one of them fine-tuned in segments, its mask in the last segment's folder)."""
    run = tmp_path / "run"
    shutil.copytree(micro_run, run)
    plain = run_branch(run, "oneshot_magnitude", round="all")
    tuned = run_branch(run, "oneshot_magnitude", round=2, seeds=[1], finetune=1)
    plots = plots_of([run], tmp_path)
    series = errorbars(plots[PerplexityPlot].figure().axes[0])
    as_is = sorted(plain, key=lambda b: b.round)
    assert xy(series["oneshot_magnitude"]) == (
        [remaining(b.sparsity) for b in as_is],
        [b.val_perplexity for b in as_is],
    )
    assert xy(series["oneshot_magnitude (finetune 1)"]) == ([remaining(tuned[0].sparsity)], [tuned[0].val_perplexity])
    overlap = dict(bars(plots[OverlapPlot].figure().axes[1]))
    ticket = round_mask(run, 2)
    for label, result in (("oneshot_magnitude", as_is[-1]), ("oneshot_magnitude (finetune 1)", tuned[0])):
        folder = run / "branches" / "oneshot_magnitude" / "-".join(f"{k}_{v}" for k, v in result.params.items())
        files = (folder / "mask.safetensors", folder / "segment_0" / "mask.safetensors")
        mask = Mask.load(next(p for p in files if p.is_file()))
        assert overlap[label] == jaccard_by_hand(ticket, mask)


def _branch(branch: str, **params: object) -> BranchResult:
    measured = dict.fromkeys(("sparsity", "attention_sparsity", "mlp_sparsity", "val_perplexity", "val_nll"), 0.5)
    return BranchResult(
        round=5,
        branch=branch,
        params={"round": 5, "seed": 1, **params},
        train_steps=0,
        final_train_loss=0.0,
        wall_seconds=0.0,
        per_layer_sparsity={},
        mask_checksum="",
        **measured,
    )


def test_legend_labels_name_only_the_parameters_off_their_default():
    """The tables name every parameter; the legend names what tells the baselines apart."""
    assert legend_label(_branch("wanda", finetune=0, calibration_blocks=128)) == "wanda"
    row = _branch("wanda", finetune=5, compare="row", calibration_blocks=128)
    assert legend_label(row) == "wanda (finetune 5, compare row)"
    assert legend_label(_branch("oneshot_magnitude", finetune=0)) == "oneshot_magnitude"
    assert legend_label(_branch("random_prune")) == "random_prune"
    assert legend_label(_branch("rewind_step", rewind=0)) == "rewind_step (rewind 0)"  # a required parameter
    assert legend_label(_branch("no_such_branch", depth=3)) == "no_such_branch (depth 3)"  # every parameter


def test_a_legend_of_eight_baselines_fits_the_figure():
    """The embedded default's baselines (with its fine-tuned ones), in its report's order: long labels in both of
    the legend's columns once ran past both edges of the figure."""
    labels = [
        legend_label(_branch(b, **p))
        for b, p in (
            ("oneshot_magnitude", {"finetune": 0}),
            ("wanda", {"finetune": 0, "calibration_blocks": 128}),
            ("wanda", {"finetune": 0, "compare": "row", "calibration_blocks": 128}),
            ("oneshot_magnitude", {"finetune": 5}),
            ("random_prune", {}),
            ("random_reinit", {}),
            ("wanda", {"finetune": 5, "calibration_blocks": 128}),
            ("wanda", {"finetune": 5, "compare": "row", "calibration_blocks": 128}),
        )
    ]
    points = (Point(80.0, Spread((200.0,))), Point(64.0, Spread((210.0, 220.0))))
    ticket = Series("ticket (IMP rounds)", points)
    dense_long = Series("dense trained as long as the ticket (dense_long)", points)
    plot = PerplexityPlot(ticket, Spread((221.0,)), dense_long, tuple(Series(label, points) for label in labels))
    figure = plot.figure()
    renderer = FigureCanvasAgg(figure).get_renderer()
    figure.draw(renderer)
    (legend,) = figure.legends
    box = legend.get_window_extent(renderer)
    assert 0 <= box.x0 and box.x1 <= figure.bbox.width
    assert [t.get_text() for t in legend.get_texts()][-len(labels) :] == labels
