"""The generated test model behind `builtin://tiny-llama`, and its LoRA adapter
behind `builtin://tiny-llama-lora`.

A Llama with hidden size 128, 2 layers and 2 attention heads (head_dim 64: vLLM's CPU
attention kernels refuse head_dim 16), random weights from a fixed seed, a byte-level
BPE tokenizer trained on a few lines, and a chat template. It is written as
safetensors + tokenizer.json, so vLLM (or any Hugging Face loader) reads it like a
real checkpoint, and it needs neither a GPU nor a network.

Generation is deterministic and atomic: the files are written into a temporary
directory next to the target and renamed into place, so two processes racing to
create it never see a half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

# Bump when anything below changes: the directory name carries it, so a cache from an
# older layout is never reused.
VERSION = "v1"

HIDDEN = 128
LAYERS = 2
HEADS = 2
INTERMEDIATE = 256
MAX_POSITIONS = 2048
SEED = 1234

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Enough text for a BPE vocabulary of a few hundred tokens; the content only has to
# cover the characters prompts use, since the weights are random anyway.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! How are you today? I am fine, thank you.",
    "Large language models generate text one token at a time.",
    "Kubernetes runs containers; Ray Serve scales Python deployments.",
    "vLLM batches requests continuously and pages its KV cache.",
    "0123456789 + - * / = ( ) [ ] { } < > , . ; : ' \" ! ? @ # $ % & _ ~ ^ | \\",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "Once upon a time there was a tiny model that could only say random words.",
    "Write a short poem about the sea, the sky and the mountains.",
    "system user assistant tell me a story about a robot and a cat",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def cache_root() -> Path:
    """`${MODELFLEET_CACHE:-~/.cache}/modelfleet/models`."""
    base = os.environ.get("MODELFLEET_CACHE") or os.path.join(Path.home(), ".cache")
    return Path(base) / "modelfleet" / "models"


def model_dir(root: Path | None = None) -> Path:
    """Where the tiny model of the current VERSION lives (it may not exist yet)."""
    return (root or cache_root()) / f"tiny-llama-{VERSION}"


def ensure_tiny_llama(root: Path | None = None) -> Path:
    """Return the tiny model's directory, generating it first when it is missing."""
    return _ensure(model_dir(root), "config.json", _write_model)


def lora_dir(root: Path | None = None) -> Path:
    """Where the tiny model's LoRA adapter of the current VERSION lives."""
    return (root or cache_root()) / f"tiny-llama-lora-{VERSION}"


def ensure_tiny_lora(root: Path | None = None) -> Path:
    """Return the tiny model's LoRA adapter directory, generating it when missing.

    A PEFT-format adapter (adapter_config.json + adapter_model.safetensors) of rank
    `LORA_RANK` on every layer's q_proj and v_proj, with weights large enough that
    greedy output with the adapter differs from the base model's: a test can tell
    which of the two answered.
    """
    return _ensure(lora_dir(root), "adapter_config.json", _write_lora)


def _ensure(target: Path, marker: str, write: Any) -> Path:
    if (target / marker).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its copy is identical (same seed).
            if not (target / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


LORA_RANK = 8
LORA_ALPHA = 16
LORA_TARGETS = ("q_proj", "v_proj")
LORA_SEED = 4321


def _write_lora(path: Path) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(LORA_SEED)
    tensors = {}
    for i in range(LAYERS):
        for module in LORA_TARGETS:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{module}."
            a = rng.standard_normal((LORA_RANK, HIDDEN)) * 0.5
            b = rng.standard_normal((HIDDEN, LORA_RANK)) * 0.5
            tensors[prefix + "lora_A.weight"] = a.astype(np.float32)
            tensors[prefix + "lora_B.weight"] = b.astype(np.float32)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": LORA_RANK,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "base_model_name_or_path": str(model_dir(path.parent)),
    }
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(path / "adapter_model.safetensors"), metadata={"format": "pt"})


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS, trainer=trainer)
    return tokenizer


def _weights(vocab: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": rand(vocab, HIDDEN),
        "model.norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "lm_head.weight": rand(vocab, HIDDEN),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        tensors |= {
            p + "input_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
            p + "post_attention_layernorm.weight": np.ones(HIDDEN, dtype=np.float32),
            p + "self_attn.q_proj.weight": rand(HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": rand(HIDDEN, HIDDEN),
            p + "self_attn.v_proj.weight": rand(HIDDEN, HIDDEN),
            p + "self_attn.o_proj.weight": rand(HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": rand(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": rand(HIDDEN, INTERMEDIATE),
        }
    return tensors


def _write_model(path: Path) -> None:
    from safetensors.numpy import save_file

    tokenizer = _train_tokenizer()
    vocab = tokenizer.get_vocab_size()
    bos, eos = tokenizer.token_to_id("<s>"), tokenizer.token_to_id("</s>")
    tokenizer.save(str(path / "tokenizer.json"))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "</s>",
        "model_max_length": MAX_POSITIONS,
        "add_bos_token": False,
        "chat_template": CHAT_TEMPLATE,
    }
    generation_config = {"bos_token_id": bos, "eos_token_id": eos}
    special_tokens_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    for name, content in [
        ("config.json", config),
        ("tokenizer_config.json", tokenizer_config),
        ("generation_config.json", generation_config),
        ("special_tokens_map.json", special_tokens_map),
    ]:
        (path / name).write_text(json.dumps(content, indent=2) + "\n")
    save_file(_weights(vocab), str(path / "model.safetensors"), metadata={"format": "pt"})
