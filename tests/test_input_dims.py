"""One truth for "which dimension of a weight do its inputs run along": the module's class (what Wanda's
calibration hooks read), and the family table (``families.input_dim``: N:M groups, per-row comparisons) checked
against it on every prunable weight of every family the table lists."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from gpt_tickets.models.families import PRUNABLE_PATTERNS, input_dim, prunable_weights
from gpt_tickets.sparsity.calibration import module_input_dim

TINY = {  # one layer, every size small; a family without an entry here fails to build: add one
    "gpt2": dict(n_layer=1, n_embd=8, n_head=2, n_positions=8, vocab_size=10),
    **{
        t: dict(hidden_size=8, intermediate_size=12, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                vocab_size=10)
        for t in ("llama", "mistral", "qwen2")
    },
}  # fmt: skip


@pytest.mark.parametrize("model_type", sorted(PRUNABLE_PATTERNS))
def test_the_family_tables_input_dim_is_the_modules(model_type):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **TINY[model_type]))
    weights = prunable_weights(model, ["attention", "mlp", "embeddings"])
    for w in weights:
        module = model.get_submodule(w.name.rpartition(".")[0])
        if w.group == "embeddings":  # its module reads token ids: no input features to hook
            assert isinstance(module, nn.Embedding)
            with pytest.raises(ValueError, match="whose input features Wanda cannot name"):
                module_input_dim(module, w.name)
        else:
            assert module_input_dim(module, w.name) == input_dim(model_type, w.name), w.name
    assert {w.group for w in weights} == {"attention", "mlp", "embeddings"}
