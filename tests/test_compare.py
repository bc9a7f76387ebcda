"""`tirl compare` on evaluations written in code (metrics.json as `tirl eval` writes it): where its files go, how it
writes percentages, and that its pictures stay readable when nothing was learned (every point at 0)."""

import itertools
import json
import re

import pytest

from conftest import tirl_in_process as tirl

PERCENT = r"[0-9]+\.[0-9]%"  # fmt_percent: one decimal and a % sign


def write_evaluation(directory, method, temperature, precision, coverage=None, self_bleu=30.0, greedy=None):
    """A `tirl eval` output directory of a pick-two evaluation (K = 8) of a run trained with `method`."""
    coverage = precision if coverage is None else coverage
    sampled = {"precision": precision, "coverage": coverage, "self_bleu": self_bleu, "distinct_2": 0.8,
               "entropy": 0.5, "mean_tokens": 14.0, "eos_rate": 1.0,
               "pass_at_k": [min(1.0, precision * k) for k in range(1, 9)]}
    greedy = precision if greedy is None else greedy
    metrics = {"kind": "tirl.eval", "model": str(directory), "dataset": "pick-two", "split": "test", "num_prompts": 16,
               "metric_family": "valid_set", "primary_score": "precision",
               "run": {"method": method, "iq_lambda": 0.0 if method == "mle" else 0.01, "iq_value": "reference"},
               "settings": {"temperature": temperature, "samples": 8}, "sampled": sampled,
               "greedy": {"precision": greedy, "coverage": greedy / 8}}
    directory.mkdir(parents=True)
    (directory / "metrics.json").write_text(json.dumps(metrics))
    return directory


def two_runs(root, precision=0.125):
    """Two training runs (MLE, IQLearn), each evaluated at T = 0.7 and 1 as `tirl eval --model RUN` files them."""
    runs = []
    for method in ("mle", "iqlearn"):
        for t in (0.7, 1.0):
            write_evaluation(root / method / "eval" / f"t{t:g}", method, t, precision)
        runs.append(root / method)
    return runs


def test_compare_writes_every_file_beside_its_output(tmp_path, monkeypatch, capsys):
    """A directory as --output gets the files inside it, not beside it under its name (`--output out/` wrote out.md
    and out_valid_set.png into the working directory); a name without a suffix is the PNG's stem."""
    runs = two_runs(tmp_path / "runs")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    rc, out, err = tirl(capsys, "compare", *runs, "--output", "out/")
    assert rc == 0, err
    assert sorted(p.name for p in (work / "out").iterdir()) == ["compare.md", "compare.png", "compare_valid_set.png"]
    assert "out/compare.png and out/compare_valid_set.png" in out

    rc, _, err = tirl(capsys, "compare", *runs, "--output", "out/cmp")
    assert rc == 0, err
    assert {"cmp.png", "cmp.md", "cmp_valid_set.png"} <= {p.name for p in (work / "out").iterdir()}
    assert "![task score vs Self-BLEU](cmp.png)" in (work / "out" / "cmp.md").read_text()

    rc, _, err = tirl(capsys, "compare", *runs, "--output", "out")  # an existing directory, no slash
    assert rc == 0, err
    assert sorted(p.name for p in work.iterdir()) == ["out"]  # nothing in the working directory


def test_compare_writes_every_percentage_alike(tmp_path, capsys):
    """Precision, coverage, pass@K and the EOS rate in the table, mean ± s.e.m. in the frontier table and the ticks
    of a percentage axis all read `12.5%` (pass@K was written as a fraction, 0.5, beside 12.5%)."""
    from tirl.evaluation.report import compare_figure, find_evaluations, label_evaluations, valid_set_figure
    from tirl.plots import pyplot

    runs = [write_evaluation(tmp_path / f"s{seed}", "mle", 1.0, p) for seed, p in ((0, 0.1), (1, 0.15))]
    rc, out, err = tirl(capsys, "compare", *runs, "--output", tmp_path / "c.png")
    assert rc == 0, err
    table = (tmp_path / "c.md").read_text()
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]
    head = rows[0]
    percent_columns = [i for i, h in enumerate(head) if h.startswith(("precision", "coverage", "pass@K", "EOS"))]
    assert len(percent_columns) == 5
    for row in rows[1:3]:
        for i in percent_columns:
            assert re.fullmatch(PERCENT, row[i]), (head[i], row[i])
    assert rows[1][head.index("pass@K")] == "80.0%" and rows[1][head.index("EOS reached")] == "100.0%"
    frontier = [r for r in rows if r[0] == "mle" and r[1] in ("greedy", "1")]
    assert [r[3] for r in frontier] == ["12.5% ± 2.5%", "12.5% ± 2.5%"]
    assert not re.search(r"[0-9]%?\s*\(%\)", table)  # no bare numbers under a (%) header

    evals = label_evaluations([e for r in runs for e in find_evaluations(r)])
    for fig in (compare_figure(evals, "precision"), valid_set_figure(evals)):
        fig.canvas.draw()
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_yticklabels() if t.get_text()]
        assert ticks and all(re.fullmatch(PERCENT, t.replace("−", "-")) for t in ticks), ticks
        pyplot().close(fig)


@pytest.mark.parametrize("figure", ["compare", "valid_set"])
def test_a_plot_where_nothing_was_learned_is_readable(tmp_path, figure):
    """Every evaluation at 0 (the tour's runs before its models learned anything): the points sit inside the axes
    and clear of the axis line, the picture says that everything is 0, and no temperature tag lies on another (they
    were all written at one offset from points that coincide, one unreadable smudge)."""
    from tirl.evaluation.report import compare_figure, find_evaluations, label_evaluations, valid_set_figure
    from tirl.plots import pyplot

    runs = two_runs(tmp_path, precision=0.0)
    evals = label_evaluations([e for r in runs for e in find_evaluations(r)])
    fig = compare_figure(evals, "precision") if figure == "compare" else valid_set_figure(evals)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    tags = [t for t in ax.texts if re.fullmatch(r"greedy|T=[0-9.]+", t.get_text())]
    assert sorted(t.get_text() for t in tags) == ["T=0.7", "T=0.7", "T=1", "T=1", "greedy", "greedy"]
    boxes = [t.get_window_extent(renderer) for t in tags]
    for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2):
        assert not a.overlaps(b), (tags[i].get_text(), tags[j].get_text())
    low, high = ax.get_ylim()
    assert low < 0 < high  # a point at 0 is drawn above the axis line, not on it
    assert any("every point scores 0" in t.get_text() for t in ax.texts)
    pyplot().close(fig)
