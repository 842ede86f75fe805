"""Offline tokenizers for the tiny pipeline twins: CLIP (byte-level, no merges), T5 (Unigram), Gemma (byte-fallback
BPE), Qwen2 (byte-level BPE).

Each one is a `tokenizers.Tokenizer` built in code over a character/byte alphabet and wrapped in the transformers
class the pipeline expects, so nothing is read from the hub. A random-weight text encoder needs only *some*
stable mapping from text to ids; what matters is that every id is below the encoder's `vocab_size`, which
`check_vocab` asserts (recent transformers can otherwise silently hand back a 2-token tokenizer offline).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Qwen2's chat and vision markers; the QwenImage prompt template is written with the first three.
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def bytes_to_unicode() -> list[str]:
    """CLIP's reversible byte -> printable-character table (openai/CLIP `bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(path: Path) -> int:
    """Write an offline CLIP tokenizer (vocab.json + empty merges.txt) to `path`; returns the vocab size."""
    from transformers import CLIPTokenizer

    symbols = bytes_to_unicode()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=77)
    # Recent transformers can silently build a 2-token tokenizer offline; refuse to continue if so.
    if len(tok) != len(vocab):
        raise RuntimeError(f"offline CLIP tokenizer has {len(tok)} tokens, expected {len(vocab)}")
    tok.save_pretrained(str(path))
    return len(vocab)


def check_vocab(tokenizer: Any, expected: int | None = None, encoder_vocab: int | None = None) -> int:
    """Assert the tokenizer has exactly `expected` tokens and fits an encoder of `encoder_vocab`; return its size."""
    size = len(tokenizer)
    if expected is not None and size != expected:
        raise RuntimeError(f"offline {type(tokenizer).__name__} has {size} tokens, expected {expected}")
    if encoder_vocab is not None and encoder_vocab < size:
        raise RuntimeError(f"text encoder vocab_size {encoder_vocab} < tokenizer size {size}")
    return size


def t5_tokenizer(model_max_length: int = 512) -> Any:
    """A T5 tokenizer: SentencePiece-style Unigram over single characters, ids <pad>=0, </s>=1, <unk>=2."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import T5TokenizerFast

    # T5 has no byte fallback, so the alphabet is the 256 printable stand-ins of CLIP's byte table plus "▁";
    # anything outside it is <unk>, which is harmless for a random encoder.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)] + [(c, -3.0) for c in bytes_to_unicode()]
    backend = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    tok = T5TokenizerFast(
        tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0,
        model_max_length=model_max_length,
    )
    check_vocab(tok, len(pieces))
    return tok


def gemma_tokenizer(model_max_length: int = 2048) -> Any:
    """A Gemma tokenizer: BPE with byte fallback over printable ASCII, ids <pad>=0, <eos>=1, <bos>=2, <unk>=3."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import GemmaTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    # Byte tokens first (like the real vocab), so any character round-trips; ASCII gets its own ids.
    symbols = specials + [f"<0x{b:02X}>" for b in range(256)] + ["▁"] + [chr(c) for c in range(33, 127)]
    vocab = {s: i for i, s in enumerate(symbols)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="▁", behavior="merged_with_next")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    # Gemma prepends <bos>; the text encoders attend to it like the real ones do.
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", 2)])
    tok = GemmaTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>", unk_token="<unk>",
        mask_token="<mask>", model_max_length=model_max_length, padding_side="right",
    )
    check_vocab(tok, len(vocab))
    return tok


def qwen2_tokenizer(model_max_length: int = 2048) -> Any:
    """A Qwen2 tokenizer: GPT-2 style byte-level BPE with no merges (every byte a token) plus QWEN_SPECIALS."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import Qwen2TokenizerFast

    symbols = bytes_to_unicode() + list(QWEN_SPECIALS)
    vocab = {s: i for i, s in enumerate(symbols)}
    backend = Tokenizer(BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    # Special so the chat template's markers stay one token each instead of being split into bytes.
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    tok = Qwen2TokenizerFast(
        tokenizer_object=backend, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=list(QWEN_SPECIALS[1:]), model_max_length=model_max_length,
    )
    check_vocab(tok, len(vocab))
    return tok
