"""Rewrite a Qwen2 checkpoint as the equivalent Llama one (attention_bias=True, o_proj bias 0; logits identical).

Why: transformers 5's AutoTokenizer loads a ``qwen2`` checkpoint's tokenizer as ``Qwen2Tokenizer`` whatever its
tokenizer_config says (qwen2 is in its list of hub configs to override), which turns the knowledge reader's
word-level tokenizer into byte-pair garbage; a ``llama`` checkpoint with ``tokenizer_class: TokenizersBackend``
keeps the tokenizer as written. Used on the reader in ``benchmarks/models/knowledge_reader``:

    python benchmarks/reader_to_llama.py QWEN2_FOLDER LLAMA_FOLDER
"""

import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2ForCausalLM

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
q = Qwen2ForCausalLM.from_pretrained(src).eval()
c = q.config
cfg = LlamaConfig(
    vocab_size=c.vocab_size,
    hidden_size=c.hidden_size,
    intermediate_size=c.intermediate_size,
    num_hidden_layers=c.num_hidden_layers,
    num_attention_heads=c.num_attention_heads,
    num_key_value_heads=c.num_key_value_heads,
    max_position_embeddings=c.max_position_embeddings,
    rms_norm_eps=c.rms_norm_eps,
    rope_parameters=getattr(c, "rope_parameters", None),
    tie_word_embeddings=c.tie_word_embeddings,
    attention_bias=True,
    hidden_act=c.hidden_act,
    bos_token_id=c.bos_token_id,
    eos_token_id=c.eos_token_id,
    pad_token_id=c.pad_token_id,
)
llama = LlamaForCausalLM(cfg).eval()
state = q.state_dict()
for name, p in llama.state_dict().items():
    if name.endswith("o_proj.bias"):
        state[name] = torch.zeros_like(p)
missing = llama.load_state_dict(state, strict=False)
print(missing)
ids = torch.randint(0, c.vocab_size, (2, 30))
print("max diff", (q(input_ids=ids).logits - llama(input_ids=ids).logits).abs().max().item())
dst.mkdir(parents=True, exist_ok=True)
llama.save_pretrained(dst)
for f in src.iterdir():
    if f.name.startswith("tokenizer") or f.name in ("chat_template.jinja", "training.json", "generation_config.json"):
        shutil.copy(f, dst / f.name)
tc = json.loads((dst / "tokenizer_config.json").read_text())
tc["tokenizer_class"] = "TokenizersBackend"
(dst / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
