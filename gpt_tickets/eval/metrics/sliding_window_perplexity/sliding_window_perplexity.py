"""gpt_tickets' exact sliding-window perplexity as an ``evaluate`` metric.

evaluate copies this file into its modules cache and imports it from there, so it must not import anything
relative to itself: it reaches the package by its installed name and only wraps ``evaluate_texts``.
"""

from __future__ import annotations

import datasets
import evaluate

from gpt_tickets.eval.models import evaluate_texts

_DESCRIPTION = """
Perplexity of a causal language model over a corpus, computed exactly: the texts are joined with blank lines,
tokenized once and scored in sliding windows of max_length tokens moving by stride, and the perplexity is
exp(total negative log-likelihood / scored tokens), as in the Hugging Face guide "Perplexity of fixed-length models".
Unlike the canonical "perplexity" metric it gives one corpus-level number, not one per text, and it runs under
accelerate launch with the windows split over the processes.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score, in order.
    model_id (str): a local folder (an exported ticket included) or Hub id of a causal LM with safetensors weights.
    max_length (int, optional): tokens per window; defaults to the model's context length.
    stride (int, optional): tokens the window moves by; defaults to max_length (no overlap).
    batch_size (int, optional): windows per forward pass, per process; defaults to 8.
Returns:
    perplexity, mean_nll (nats per scored token), scored_tokens, tokens_per_second, max_length, stride,
    num_processes, and sparsity (overall, attention, mlp) when model_id is an exported ticket, else None.
Examples:
    >>> metric = evaluate.load(gpt_tickets.evaluation.METRIC_PATH)
    >>> metric.compute(predictions=texts, model_id="runs/tiny/ticket", stride=64)["perplexity"]
"""

_CITATION = """
@misc{hf_perplexity_guide,
  title = {Perplexity of fixed-length models},
  author = {{Hugging Face}},
  howpublished = {\\url{https://huggingface.co/docs/transformers/perplexity}}
}
"""


class SlidingWindowPerplexity(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            reference_urls=["https://huggingface.co/docs/transformers/perplexity"],
        )

    def _compute(
        self,
        predictions: list[str],
        model_id: str,
        max_length: int | None = None,
        stride: int | None = None,
        batch_size: int = 8,
    ) -> dict:
        result = evaluate_texts(model_id, predictions, max_length=max_length, stride=stride, batch_size=batch_size)
        return {
            "perplexity": result.perplexity,
            "mean_nll": result.nll,
            "scored_tokens": result.scored_tokens,
            "tokens_per_second": result.tokens_per_second,
            "max_length": result.max_length,
            "stride": result.stride,
            "num_processes": result.num_processes,
            "sparsity": result.sparsity,
        }
