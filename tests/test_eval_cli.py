"""`genforge eval`: protocol names, the plumbing from checkpoint or samples file to metrics, text metrics' math."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sacrebleu
import torch
import torch.nn.functional as F

from genforge import media
from genforge.cli import main
from genforge.data import inception as inception_module
from genforge.evaluation import text as text_metrics
from genforge.evaluation.context import count_tag
from genforge.models.gpt import GPT, GPTConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def gpt_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "gpt"
    assert main(["train", str(REPO / "configs" / "debug" / "gpt.yaml"), "--run-dir", str(run)]) == 0
    return run


@pytest.fixture(scope="module")
def gan_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "gan"
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(run)]) == 0
    return run


def test_text_eval_writes_named_metrics(gpt_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "e.json"
    assert main(["eval", str(gpt_run), "--n", "6", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    metrics = result["metrics"]
    assert result["n"] == 6 and result["checkpoint"].endswith("step-4")
    assert set(metrics) == {"val_loss", "perplexity", "bits_per_char", "val_tokens", "distinct_1@6", "distinct_2@6",
                            "distinct_3@6", "self_bleu@6", "repetition_4@6"}
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["val_loss"]))
    # character tokens of ASCII text: one byte each, so bits per char = loss / ln 2
    assert metrics["bits_per_char"] == pytest.approx(metrics["val_loss"] / math.log(2))


def test_likelihood_predicts_every_token_once() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_dict({"preset": "debug", "vocab_size": 7})).eval()

    class Ids:
        def decode(self, ids: list[int]) -> str:
            return "x" * len(ids)

    tokens = torch.randint(0, 7, (75,), dtype=torch.int64)  # 74 targets: two full windows of 32 and one of 10
    stats = text_metrics.likelihood(model, tokens, Ids(), batch_size=1)
    with torch.no_grad():
        nats = sum(F.cross_entropy(model(tokens[s : s + 32][None])[0], tokens[s + 1 : s + 33], reduction="sum").item()
                   for s in (0, 32)) + F.cross_entropy(model(tokens[64:74][None])[0], tokens[65:75], reduction="sum").item()
    assert stats["tokens"] == 74
    assert stats["loss"] == pytest.approx(nats / 74, rel=1e-6)
    assert stats["bits_per_byte"] == pytest.approx(nats / 74 / math.log(2), rel=1e-6)


def test_distinct_repetition_and_self_bleu() -> None:
    texts = ["a b c a b c", "a b d"]
    assert text_metrics.distinct_n(texts, 1) == pytest.approx(4 / 9)  # {a, b, c, d} of 9 words
    assert text_metrics.distinct_n(texts, 2) == pytest.approx(4 / 7)  # ab bc ca ab bc | ab bd
    # 4-grams of the first text: abca bcab cabc (3 distinct of 3) -> 0; second has none
    assert text_metrics.repetition_rate(["a b a b a b"], 2) == pytest.approx(1 - 2 / 5)
    samples = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran far away"]
    expected = np.mean([sacrebleu.sentence_bleu(s, [t for t in samples if t is not s]).score for s in samples])
    assert text_metrics.self_bleu(samples) == pytest.approx(expected)
    assert text_metrics.self_bleu(["same words here", "same words here"]) == pytest.approx(100.0)


class FakeExtractor:
    """Stands in for Inception: a fixed random projection of the 299x299 preprocessed pixels (the real network is
    87 MB and takes minutes; its own tests live in test_inception.py)."""

    calls: list[int] = []

    def __init__(self) -> None:
        self.proj = torch.randn(3 * 8 * 8, 16, generator=torch.Generator().manual_seed(0))

    def key_parts(self) -> dict[str, str]:
        return {"extractor": "fake-projection", "weights_sha1": "0", "preprocess": "test"}

    def __call__(self, images: torch.Tensor, progress: Any = None) -> np.ndarray:
        FakeExtractor.calls.append(len(images))
        if progress is not None:
            progress(len(images))
        x = inception_module.preprocess(images)  # (N, 3, 299, 299) in [-1, 1]
        x = F.adaptive_avg_pool2d(x, 8).flatten(1)
        return (x @ self.proj).double().numpy()


def test_image_eval_plumbing_and_cache(gan_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(inception_module, "load_inception", lambda path=None, **kw: FakeExtractor())
    FakeExtractor.calls = []
    out = tmp_path / "e.json"
    argv = ["eval", str(gan_run), "--metrics", "fid,kid,pr", "--n", "40", "--ref", "mnist-mini:test", "--json", str(out)]
    assert main(argv) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"fid40-mnist-mini-test", "kid40-mnist-mini-test", "kid40-mnist-mini-test-std",
                            "precision40-mnist-mini-test", "recall40-mnist-mini-test"}
    assert FakeExtractor.calls == [1000, 40]  # the reference split once, the samples once, shared by all metrics
    assert metrics["fid40-mnist-mini-test"] > 0
    FakeExtractor.calls = []
    assert main(argv) == 0
    assert FakeExtractor.calls == [40]  # reference features came from the cache
    assert json.loads(out.read_text())["metrics"] == metrics  # same seed, same samples, same numbers


def test_eval_of_a_samples_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(inception_module, "load_inception", lambda path=None, **kw: FakeExtractor())
    images = torch.randint(0, 256, (30, 1, 28, 28), dtype=torch.uint8)
    media.save_images(images.float() / 127.5 - 1, tmp_path / "s.npz")
    out = tmp_path / "e.json"
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--metrics", "fid", "--ref", "mnist-mini:test",
                 "--json", str(out)]) == 0
    assert "fid30-mnist-mini-test" in json.loads(out.read_text())["metrics"]
    assert main(["eval", "--samples", str(tmp_path / "s.npz"), "--metrics", "fid"]) == 2  # no --ref to compare to


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_eval_errors(gan_run: Path, gpt_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert "did you mean 'fid'" in _error(capsys, ["eval", str(gan_run), "--metrics", "fdi"])
    assert "applies to text models" in _error(capsys, ["eval", str(gan_run), "--metrics", "ppl"])
    assert "applies to image models" in _error(capsys, ["eval", str(gpt_run), "--metrics", "fid"])
    assert "give a checkpoint PATH" in _error(capsys, ["eval"])
    assert "does not exist" in _error(capsys, ["eval", "--samples", str(tmp_path / "none.npz"), "--ref", "mnist:test"])
    assert "--n 0 is out of range" in _error(capsys, ["eval", str(gan_run), "--n", "0"])
    assert "--inception" in _error(capsys, ["eval", str(gan_run), "--metrics", "fid", "--n", "4",
                                            "--inception", str(tmp_path / "missing.pt")])


def test_count_tag() -> None:
    assert [count_tag(n) for n in (2000, 50000, 500, 1500)] == ["2k", "50k", "500", "1500"]


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "classifier"
    assert main(["train", str(REPO / "configs" / "debug" / "classifier.yaml"), "--run-dir", str(run)]) == 0
    return run


def test_label_coverage_math() -> None:
    from genforge.evaluation.fast import label_coverage

    assert label_coverage(torch.tensor([0, 1, 2, 3]), 4) == (4, pytest.approx(0.0))
    covered, kl = label_coverage(torch.tensor([0, 0, 0, 1]), 4)  # p = (3/4, 1/4, 0, 0)
    assert covered == 2 and kl == pytest.approx(0.75 * math.log(3) + 0.25 * math.log(1))


def test_fast_metrics_and_classifier_accuracy(classifier_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    cgan = tmp_path / "cgan"
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(cgan),
                 "--set", "model.num_classes=10", "--set", "train.steps=2"]) == 0
    out = tmp_path / "e.json"
    assert main(["eval", str(cgan), "--metrics", "fd-fast,pr-fast,coverage,class-acc", "--n", "30",
                 "--ref", "mnist-mini:test", "--classifier", str(classifier_run), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert set(metrics) == {"fd-fast30-mnist-mini-test", "precision-fast30-mnist-mini-test",
                            "recall-fast30-mnist-mini-test", "classes_covered30", "label_kl_uniform30", "class_acc30"}
    assert 1 <= metrics["classes_covered30"] <= 10 and 0 <= metrics["class_acc30"] <= 1
    assert list((tmp_path / "data" / "eval-cache").glob("mnist-mini-test-*.npz"))  # reference features cached
    assert main(["eval", str(classifier_run), "--json", str(out)]) == 0  # a classifier's default: test accuracy
    assert set(json.loads(out.read_text())["metrics"]) == {"accuracy-mnist-mini-test"}
    monkeypatch.delenv("GENFORGE_CLASSIFIER", raising=False)
    assert main(["eval", str(cgan), "--metrics", "fd-fast", "--n", "4"]) == 2
    assert "configs/mnist/classifier.yaml" in capsys.readouterr().err


def test_eval_during_training_with_fast_metrics(classifier_run: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    run = tmp_path / "gan"
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(run),
                 "--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "eval.n=40",
                 "--set", f"eval.classifier={classifier_run}", "--set", "eval.ref=mnist-mini:test",
                 "--set", "train.keep_best=true", "--set", "train.best_metric=fd-fast"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/fd-fast40-mnist-mini-test" in r}
    assert sorted(evals) == [2, 4]
    assert set(evals[2]) == {"step", "elapsed", "eval_seconds", "eval/fd-fast40-mnist-mini-test", "eval/precision-fast40-mnist-mini-test",
                             "eval/recall-fast40-mnist-mini-test", "eval/classes_covered40", "eval/label_kl_uniform40"}
    best = min(evals, key=lambda s: evals[s]["eval/fd-fast40-mnist-mini-test"])
    assert (run / "best").read_text().strip() == f"step-{best}"
    # `genforge eval` takes n, ref and classifier from the run's eval section; the same samples give the same value
    out = tmp_path / "e.json"
    assert main(["eval", str(run), "--metrics", "fd-fast", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["metrics"]["fd-fast40-mnist-mini-test"] == pytest.approx(
        evals[4]["eval/fd-fast40-mnist-mini-test"], rel=1e-5)
    # no classifier: the run fails before its first step, naming the fix
    monkeypatch.delenv("GENFORGE_CLASSIFIER", raising=False)
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(tmp_path / "nocls"),
                 "--set", "train.eval_every=2"]) == 2
    assert "configs/mnist/classifier.yaml" in capsys.readouterr().err
    assert not (tmp_path / "nocls").exists()
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(tmp_path / "bad"),
                 "--set", "train.eval_every=2", "--set", "eval.metrics=[ppl]"]) == 2
    assert "ppl applies to text models" in capsys.readouterr().err


def test_fast_metrics_bring_both_sets_to_the_classifier_resolution(classifier_run: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A 32x32 generator against a 28x28 classifier: real images go 28 -> 32 (the data pipeline, as in training),
    then both sets take the same 32 -> 28 resize; real test images scored as 'samples' give FD 0."""
    from genforge.evaluation.fast import fast_features, to_classifier_size
    from genforge.evaluation.context import EvalContext, reference_images
    from genforge.evaluation.stats import fid_from_features

    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    options = {"ref": "mnist-mini:test", "classifier": str(classifier_run)}
    _, real32 = reference_images(EvalContext(pipeline=None, n=1, options=options), 32, 1)
    samples = tmp_path / "real32.npz"
    np.savez(samples, images=real32.permute(0, 2, 3, 1).numpy())
    ctx = EvalContext(pipeline=None, n=len(real32), samples_file=str(samples), options=options)
    tag, real_f, fake_f, _ = fast_features(ctx)
    assert tag == "mnist-mini-test" and real_f.shape == fake_f.shape
    assert fid_from_features(real_f, fake_f) == pytest.approx(0.0, abs=1e-6)
    x = torch.linspace(-1, 1, 32 * 32).reshape(1, 1, 32, 32)
    assert to_classifier_size(x, 28).shape == (1, 1, 28, 28) and to_classifier_size(x, 32) is x
    cache = sorted(p.name for p in (tmp_path / "data" / "eval-cache").glob("*.json"))
    meta = json.loads((tmp_path / "data" / "eval-cache" / cache[0]).read_text())
    assert meta["parts"]["preprocess"] == "uint8/127.5-1;bilinear-antialias-32-to-28"


def test_log_progress_reports_at_the_end_and_not_more_often_than_asked(caplog: pytest.LogCaptureFixture) -> None:
    from genforge.evaluation.context import log_progress

    report = log_progress("features of x", 100, every=3600)
    with caplog.at_level("INFO", logger="genforge.evaluation.context"):
        report(50)  # not yet: less than an hour since the start
        report(100)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["features of x: 100/100 images"]


def test_eval_set_changes_how_the_checkpoint_samples(gan_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(inception_module, "load_inception", lambda *a, **k: FakeExtractor())
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    values = []
    for extra in ([], ["--set", "sample.bn_stats=batch"]):
        out = tmp_path / "e.json"
        assert main(["eval", str(gan_run), "--metrics", "fid", "--n", "20", "--ref", "mnist-mini:test",
                     "--json", str(out)] + extra) == 0
        values.append(json.loads(out.read_text())["metrics"]["fid20-mnist-mini-test"])
    assert values[0] != values[1]  # batch statistics give other images
    assert "only sample.* keys" in _error(capsys, ["eval", str(gan_run), "--set", "model.z_dim=3"])
    assert "needs a checkpoint PATH" in _error(capsys, ["eval", "--samples", "x.npz", "--set", "sample.bn_stats=batch"])


def test_training_evaluation_problems_fail_before_the_first_step(classifier_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--set", "train.eval_every=2",
            "--set", f"eval.classifier={classifier_run}"]
    cases = [
        (["--set", "train.keep_best=true", "--set", "train.best_metric=fid"],
         "train.best_metric = 'fid' is not a result of eval.metrics (fd-fast, pr-fast, coverage), whose results "
         "start with fd-fast, precision-fast, recall-fast, classes_covered, label_kl_uniform"),
        (["--set", "eval.metrics=[class-acc]"], "class-acc applies to class-conditional models"),
        (["--set", "eval.ref=mnist"], "eval.ref = 'mnist': expected DATASET:SPLIT"),
    ]
    for i, (extra, message) in enumerate(cases):
        run = tmp_path / f"run{i}"
        assert main(base + ["--run-dir", str(run)] + extra) == 2
        assert message in capsys.readouterr().err
        assert not run.exists()


def test_best_metric_may_be_a_full_logged_key(classifier_run: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "data"))
    run = tmp_path / "run"
    assert main(["train", str(REPO / "configs" / "debug" / "gan.yaml"), "--run-dir", str(run),
                 "--set", "train.steps=2", "--set", "train.eval_every=1", "--set", "eval.n=20",
                 "--set", f"eval.classifier={classifier_run}", "--set", "eval.ref=mnist-mini:test",
                 "--set", "train.keep_best=true", "--set", "train.best_metric=eval/recall-fast20-mnist-mini-test",
                 "--set", "train.best_mode=max"]) == 0
    recalls = {r["step"]: r["eval/recall-fast20-mnist-mini-test"]
               for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "eval_seconds" in r}
    best = max(sorted(recalls), key=lambda s: recalls[s])  # the first of equal values wins (strict improvement)
    assert (run / "best").read_text().strip() == f"step-{best}"
