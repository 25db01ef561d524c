"""The speech protocol of `genforge eval`: synthesize the first n held-out sentences of the run's data set (a
text-to-speech model speaks their text; a vocoder resynthesizes their recordings from log-mel frames) with the
checkpoint's sampling options, and compare them with the real recordings:

    mcd        mel-cepstral distortion in dB after DTW, averaged over the clips (`speech_metrics.mcd_dtw`: its
               fixed settings are in its docstring; MCD is comparable only within one implementation)
    wer        word error rate of an independent recognizer (pocketsphinx's US English model) on the synthesized
               audio, against the normalized texts; `wer_real` is the same recognizer on the real recordings,
               the floor that says how much of the error is the recognizer's own
    rtf        real-time factor of synthesis on this machine: seconds of compute per second of audio made (text
               to waveform, vocoder included; < 1 is faster than real time)

Result keys name the protocol: `wer-ljspeech-test20` is the WER over the first 20 test sentences.
"""
from __future__ import annotations

import logging
import time

from genforge.errors import UserError
from genforge.evaluation.context import EvalContext, count_tag, held_out, metric

log = logging.getLogger(__name__)


@metric("audio", keys=("mcd", "wer", "wer_real", "rtf"))
def metric_speech(ctx: EvalContext) -> dict[str, float]:
    from genforge.evaluation.speech_metrics import Recognizer, mcd_dtw, real_time_factor, word_error_rate

    pipeline = ctx.require_pipeline("speech metrics")
    data = pipeline.config.data.model_copy(update={"limit": None})
    dataset, split = held_out(data, "test", "val", "synthesizing those", tokenizer=pipeline.tokenizer)
    n = min(ctx.n, len(dataset))
    if n < 1:
        raise UserError(f"{dataset.name} has no held-out clips to synthesize; raise data.test_fraction")
    ctx.n = n
    started = time.perf_counter()
    clips = ctx.samples()
    seconds = time.perf_counter() - started
    if len(clips) != n:
        raise UserError(f"the model made {len(clips)} clips for {n} held-out sentences")
    references = dataset.texts[:n]
    recognizer = Recognizer()
    heard = [recognizer.transcribe(w, clips.sample_rate) for w in clips.waves]
    heard_real = [recognizer.transcribe(w, dataset.sample_rate) for w in dataset.waves[:n]]
    for i in range(min(n, 3)):
        log.info("clip %d: %r -> heard %r", i, references[i], heard[i])
    mcd = sum(mcd_dtw(real, synth, clips.sample_rate) for real, synth in zip(dataset.waves[:n], clips.waves)) / n
    tag = f"{dataset.name.split(':')[0]}-{split}{count_tag(n)}"
    return {f"mcd-{tag}": mcd, f"wer-{tag}": float(word_error_rate(references, heard)["wer"]),
            f"wer_real-{tag}": float(word_error_rate(references, heard_real)["wer"]),
            f"rtf-{tag}": real_time_factor(seconds, clips.seconds)}
