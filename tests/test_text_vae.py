"""The sentence VAE: its annealing schedules, free bits and word dropout, the masked reconstruction term, the likelihood
bounds and the collapse diagnostics, sampling from the prior / given sentences / interpolations with the shared
decoding strategies, class names on the command line, the sentiment judge, and the bad inputs it refuses."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from genforge import sampling
from genforge.cli import main
from genforge.data.tokenizers import WordTokenizer
from genforge.errors import UserError
from genforge.evaluation.sentence import SentimentJudge, exact_sentence_nll, mutual_information
from genforge.media import pad_sentences
from genforge.models.gpt import GPT, GPTConfig
from genforge.models.text_vae import TextVAE, TextVAEConfig, TextVAESampleOptions

REPO = Path(__file__).resolve().parents[1]
DEBUG = str(REPO / "configs" / "debug" / "text_vae.yaml")


def model(**overrides: object) -> TextVAE:
    torch.manual_seed(0)
    return TextVAE(TextVAEConfig.from_dict({"family": "text_vae", "preset": "debug", "vocab_size": 11, "boundary": 1,
                                            **overrides}))


def beta_at(vae: TextVAE, steps: list[int]) -> list[float]:
    values = []
    for t in steps:
        vae.steps_seen.fill_(t)
        values.append(round(vae.kl_weight_now(), 4))
    return values


def test_annealing_schedules() -> None:
    steps = [0, 50, 100, 200, 250, 400, 799, 800, 900]
    assert beta_at(model(anneal="none", kl_weight=0.5), steps) == [0.5] * 9
    assert beta_at(model(anneal="linear", anneal_steps=200), steps) == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert beta_at(model(anneal="logistic", anneal_steps=200), [0, 100, 200]) == [0.0067, 0.5, 0.9933]
    # 4 cycles of 200 steps, rising over the first half of each, then kl_weight for good
    assert beta_at(model(anneal="cyclical", anneal_steps=200, anneal_cycles=4), steps) == \
        [0.0, 0.5, 1.0, 0.0, 0.5, 0.0, 1.0, 1.0, 1.0]


def batch() -> dict[str, torch.Tensor]:
    return pad_sentences([[5, 6, 7, 8], [9], [2, 3, 4]], boundary=1)


def test_reconstruction_term_is_the_masked_cross_entropy() -> None:
    vae = model().eval()
    b = batch()
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    logits, _ = vae.decoder(b["x"], vae.decoder.condition(z, None))
    full = F.cross_entropy(logits.transpose(1, 2), b["y"], ignore_index=-100, reduction="none").sum(1)
    assert torch.allclose(vae.reconstruction_nll(b["x"], b["y"], z, None), full, atol=1e-5)
    # the padding of row 1 never matters: change the padded inputs, same value
    x = b["x"].clone()
    x[1, 2:] = 7
    assert torch.allclose(vae.reconstruction_nll(x, b["y"], z, None), full, atol=1e-5)


def test_free_bits_charge_each_dimension_at_least_lambda() -> None:
    vae = model(anneal="none", free_bits=5.0)  # far above any dimension's KL at init
    torch.manual_seed(1)
    out = vae.loss(batch())
    # every one of the 4 dimensions is charged 5 nats: the loss is the reconstruction plus a constant 20
    assert out["loss"].item() == pytest.approx(out["recon_nll"].item() + 20.0, abs=1e-4)
    out["loss"].backward()
    assert vae.encoder.to_stats.weight.grad is not None  # through the reconstruction term only
    no_bits = model(anneal="none")
    torch.manual_seed(1)
    plain = no_bits.loss(batch())
    assert plain["loss"].item() == pytest.approx(plain["recon_nll"].item() + plain["kl"].item(), abs=1e-4)


def test_word_dropout_hides_decoder_inputs_but_never_the_start() -> None:
    vae = model(word_dropout=1.0)
    x = batch()["x"]
    dropped = vae._drop_words(x)
    assert dropped[:, 0].tolist() == [1, 1, 1] and (dropped[:, 1:] == 11).all()  # 11 = vocab_size: "dropped"
    assert torch.equal(vae.eval()._drop_words(x), x)  # never when evaluating


def test_likelihood_bounds_and_collapse_diagnostics() -> None:
    vae = model()
    sentences = [[5, 6, 7, 8], [9], [2, 3, 4], [4, 4]]
    g = torch.Generator().manual_seed(0)
    one = vae.log_likelihood_bounds(sentences, k=1, generator=g)
    assert torch.allclose(one["elbo"], one["recon_log_px"] - one["kl"])
    assert one["tokens"].tolist() == [5.0, 2.0, 4.0, 3.0]  # words plus the end token
    many = vae.log_likelihood_bounds(sentences, k=200, generator=torch.Generator().manual_seed(0))
    assert (many["log_px_iw"] <= 0).all()
    # the IWAE bound with 200 samples is tighter than the ELBO's expectation (averaged over 200 ELBO draws)
    elbos = torch.stack([vae.log_likelihood_bounds(sentences, k=1, generator=torch.Generator().manual_seed(s))["elbo"]
                         for s in range(200)]).mean(0)
    assert (many["log_px_iw"] > elbos).all()
    # posteriors all equal the prior: no information; far apart: log N nats; in between, below log N and the KL
    collapsed = mutual_information(torch.zeros(100, 4), torch.zeros(100, 4), torch.Generator().manual_seed(0))
    assert collapsed == pytest.approx(0.0, abs=1e-6)
    apart = mutual_information(torch.arange(100.0)[:, None].repeat(1, 4) * 10, torch.full((100, 4), -4.0),
                               torch.Generator().manual_seed(0))
    assert apart == pytest.approx(math.log(100), abs=1e-6)
    mu = torch.randn(500, 4, generator=torch.Generator().manual_seed(1)) * 0.5
    logvar = torch.full((500, 4), -1.0)
    kl = (0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum(1).mean().item()
    assert 0 < mutual_information(mu, logvar, torch.Generator().manual_seed(0)) < min(kl, math.log(500))


def test_exact_sentence_nll_of_a_gpt_matches_its_cross_entropy() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=11))
    sentences = [[5, 6, 7], [9]]
    nll = exact_sentence_nll(gpt, sentences, boundary=1)
    for i, s in enumerate(sentences):
        logits = gpt(torch.tensor([[1, *s]]))[0]
        assert nll[i].item() == pytest.approx(F.cross_entropy(logits, torch.tensor([*s, 1]), reduction="sum").item(),
                                              abs=1e-5)
    with pytest.raises(UserError, match=r"needs 9 tokens of context, more than this model's `model.block_size` \(8\)"):
        exact_sentence_nll(gpt, [list(range(2, 10))], boundary=1)


def tokenized(vae: TextVAE) -> TextVAE:
    vae.tokenizer = WordTokenizer(["<unk>", "\n", "a", "good", "bad", "film", "very", "is", "the", ".", "!"])
    return vae


def test_sampling_prior_reconstruct_interpolate() -> None:
    vae = tokenized(model())
    prior = vae.sample(3, generator=torch.Generator().manual_seed(0))
    assert len(prior) == 3 and all(isinstance(s, str) for s in prior)
    again = vae.sample(3, generator=torch.Generator().manual_seed(0), temperature=1.0, top_p=0.9)
    assert again == vae.sample(3, generator=torch.Generator().manual_seed(0), temperature=1.0, top_p=0.9)
    recon = vae.sample(2, generator=torch.Generator().manual_seed(0), reconstruct="a good film.|the bad film!")
    assert len(recon) == 4 and recon[0] == recon[1]  # greedy from the posterior mean: the same twice
    path = vae.sample(1, generator=torch.Generator().manual_seed(0), interpolate="a good film.|a bad film.", steps=4)
    assert [line.split(". ", 1)[0] for line in path] == ["1", "2", "3", "4"]
    assert len(vae.sample(2, max_new_tokens=3, temperature=1.0)[0].split()) <= 3


def test_bad_sample_options_are_clear() -> None:
    cases = {
        (("interpolate", "one|two|three"),): "takes exactly two sentences separated by one |, got 3",
        (("reconstruct", "fine| "),): "sentence 2 is empty",
        (("reconstruct", "a"), ("interpolate", "a|b")): "either sample.reconstruct or sample.interpolate, not both",
        (("steps", 1),): "sample.steps",
    }
    for options, message in cases.items():
        with pytest.raises(UserError, match=message):
            TextVAESampleOptions.parse(dict(options))
    vae = tokenized(model())
    with pytest.raises(UserError, match=r"sentence 2 \('zebra quokka'\) has no word this model knows"):
        vae.sample(1, reconstruct="a film|zebra quokka")
    cvae = tokenized(model(num_classes=2, class_names=["neg", "pos"]))
    with pytest.raises(UserError, match=r"encodes given sentences with their class: pass --class \(neg, pos\)"):
        cvae.sample(1, reconstruct="a good film")
    assert len(cvae.sample(1, cond=1, reconstruct="a good film")) == 1
    with pytest.raises(UserError, match="--class 2 is out of range; this model has classes 0..1"):
        cvae.sample(1, cond=2)
    with pytest.raises(UserError, match="this sentence VAE model is unconditional"):
        vae.sample(1, cond=1)


def test_sentiment_judge_learns_words() -> None:
    texts = ["a good film", "very good", "good acting", "a bad film", "very bad", "bad acting"] * 20
    labels = torch.tensor([1, 1, 1, 0, 0, 0] * 20)
    judge = SentimentJudge(2).fit(texts, labels, epochs=5, lr=0.1, batch_size=16)
    assert judge.predict(["good", "bad", "the film is good !", "so bad"]).tolist() == [1, 0, 1, 0]


def test_train_sample_eval_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", DEBUG, "--run-dir", str(run), "--set", "train.progress=false"]) == 0
    assert sorted(p.name for p in (run / "step-4").iterdir()) == ["config.yaml", "model.safetensors", "tokenizer.json",
                                                                  "train_state.pt"]
    capsys.readouterr()
    assert main(["sample", str(run), "--n", "2", "--set", "sample.interpolate=first citizen|all speak"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert [line[:3] for line in lines] == ["1. ", "2. ", "3. ", "4. ", "5. "]
    assert main(["sample", str(run), "--class", "pos"]) == 2
    assert "--class 'pos': this text_vae model has no class of that name; its classes have no names" in \
        capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "sentence-elbo,sentence-nll", "--iw-samples", "3",
                 "--test-limit", "20", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    for key in ("neg-elbo-lines-val20", "mi-lines-val20", "active-units-lines-val20", "nll-iw3-per-word-lines-val20",
                "ppl-iw3-lines-val20"):
        assert key in out
    assert main(["eval", str(run), "--n", "4", "--iw-samples", "2", "--test-limit", "10"]) == 0  # the family's
    out = capsys.readouterr().out                                                                   # defaults
    assert all(key in out for key in ("neg-elbo-lines-val10", "nll-iw2-lines-val10", "distinct_2@4", "self_bleu@4"))
    assert main(["eval", str(run), "--metrics", "ppl"]) == 2
    assert "ppl scores language models (gpt)" in capsys.readouterr().err
    assert main(["eval", str(run), "--metrics", "sentiment"]) == 2
    assert "sentiment judges class-conditional samples" in capsys.readouterr().err
    assert main(["train", DEBUG, "--run-dir", str(tmp_path / "cvae"), "--set", "model.num_classes=2"]) == 2
    assert "`model.num_classes` = 2 but shakespeare-mini-lines has no classes" in capsys.readouterr().err


def test_class_names_on_the_command_line(tmp_path: Path) -> None:
    vae = tokenized(model(num_classes=2, class_names=["neg", "pos"]))
    from genforge import checkpoint, config

    cfg = config.from_dict({"model": vae.config.model_dump()})
    checkpoint.save(tmp_path / "run", 1, model=vae, config_yaml=cfg.to_yaml(), tokenizer=vae.tokenizer)
    pipe = sampling.load(tmp_path / "run")
    assert pipe.cond(class_label="pos") == 1 and pipe.cond(class_label="0") == 0
    with pytest.raises(UserError, match=r"--class 'happy': .* its classes are neg \(0\), pos \(1\)"):
        pipe.cond(class_label="happy")


def test_class_guidance_is_bayes_rule_with_the_models_own_class_posterior() -> None:
    from genforge.models.text_vae import class_guidance

    logits = torch.tensor([[[2.0, 0.0, 0.0]], [[0.0, 2.0, 0.0]]])  # (C=2, B=1, V=3)
    labels = torch.tensor([0])
    assert torch.allclose(class_guidance(logits, labels, 1.0), torch.log_softmax(logits[0], -1))
    logp = torch.log_softmax(logits, -1)
    marginal = torch.logsumexp(logp, 0) - math.log(2)
    expected = logp[0] + 2.0 * (logp[0] - marginal)
    guided = class_guidance(logits, labels, 3.0)
    assert torch.allclose(guided, expected)
    assert guided[0, 0] - guided[0, 1] > logp[0, 0, 0] - logp[0, 0, 1]  # the class's own token gains on the other's


def test_guidance_needs_classes_and_unknown_words_are_never_written_by_default() -> None:
    vae = tokenized(model())
    with pytest.raises(UserError, match="`sample.guidance` = 2.0 steers a class-conditional model"):
        vae.sample(1, guidance=2.0)
    cvae = tokenized(model(num_classes=2, class_names=["neg", "pos"]))
    with torch.no_grad():
        cvae.decoder.out.bias[0] = 50.0  # <unk> is by far the most likely token everywhere
    assert all("<unk>" not in s for s in cvae.sample(4, guidance=2.0, generator=torch.Generator().manual_seed(0)))
    assert all(s.startswith("<unk>") for s in cvae.sample(2, allow_unknown=True))
