"""The Sumi tokenizer: dolma2 from a local ``tokenizer.json``, and small byte-level BPEs.

Conventions (Sumi, arXiv 2606.19005; docs/math.md "Sumi recipe facts"):

- The released model uses the dolma2 tokenizer (cl100k-derived) with a vocab of 100,278 ids:
  BOS ``<|beginoftext|>`` = 100256, EOS ``<|endoftext|>`` = 100257, pad ``<|pad|>`` = 100277.
  The special ids are looked up in the tokenizer by these strings unless given explicitly.
- Documents are ``BOS text EOS``. :meth:`SumiTokenizer.encode` prepends BOS (``add_bos=True``)
  and never appends EOS: closing a document is the packer's job, and a prompt stays open.
- Text is always text: a special-token string typed inside the text (``"<|endoftext|>"``) is
  encoded as ordinary bytes, never as the special id.  Special ids enter only through
  ``add_bos`` and the packer, so no document can forge a boundary.
- ``vocab_size`` is the model's embedding size.  It may exceed the tokenizer's own ids (the model
  has rows no token maps to); those ids decode to nothing.
- Small tokenizers (tests, the embedded default) are byte-level BPEs whose six specials take
  the last six ids: the chat tokens :data:`CHAT_TOKENS` ``<|im_start|>``, ``<|im_end|>``,
  ``<|endofprompt|>`` at ``V-6, V-5, V-4`` (the markers of :mod:`sumi.sft.template`; docs/sft.md,
  "Chat template"), then BOS, EOS, pad at ``V-3, V-2, V-1``: BOS, EOS and pad keep the layout of
  the released vocab and of ``sumi.configs.tiny(V)``.
- :attr:`SumiTokenizer.special_ids` holds BOS, EOS, pad and every token the file marks special
  (the chat tokens among them), so ``decode(..., skip_special_tokens=True)`` drops them all.

Nothing here touches the network: a missing file is an error that says where to put it.
"""

from __future__ import annotations

import functools
import operator
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sumi._fs import atomic_write

BOS_TOKEN = "<|beginoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
TOKENIZER_FILE = "tokenizer.json"
SUMI_REPO = "tohoku-nlp/sumi-7b"
SUMI_VOCAB_SIZE = 100_278
DEFAULT_VOCAB_SIZE = 512  # the embedded default; matches sumi.configs.tiny()

SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, PAD_TOKEN)
CHAT_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endofprompt|>")
"""The chat template's markers (:class:`sumi.sft.ChatTemplate`): a message starts with
``<|im_start|>`` and ends with ``<|im_end|>``; ``<|endofprompt|>`` ends the prompt.  Sumi's
released tokenizer has them; :meth:`SumiTokenizer.train_byte_level` adds them before BOS, EOS, pad."""


class SumiTokenizer:
    """A ``tokenizers.Tokenizer`` with Sumi's special ids and model vocab size.

    Build one with :meth:`from_file` (the released ``tokenizer.json``), :meth:`train_byte_level`
    or :meth:`default`.  ``bos_id``/``eos_id``/``pad_id`` default to the ids of ``<|beginoftext|>``,
    ``<|endoftext|>`` and ``<|pad|>`` in the tokenizer; ``vocab_size`` defaults to one past the
    largest id the tokenizer knows.  Every special id must lie in ``[0, vocab_size)``.

    The wrapper owns ``tokenizer`` (it switches off special-token matching inside text).
    """

    def __init__(self, tokenizer: Tokenizer, *, vocab_size: int | None = None, bos_id: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None) -> None:
        # Ids need not be contiguous (a file may leave gaps), so size by the largest id, not the count.
        own_size = max(tokenizer.get_vocab(with_added_tokens=True).values(), default=-1) + 1
        if vocab_size is None:
            vocab_size = own_size
        elif isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < own_size:
            raise ValueError(f"vocab_size must be an int >= {own_size} (the tokenizer's ids go up to "
                             f"{own_size - 1}; the model must embed all of them), got {vocab_size!r}")
        self.vocab_size: int = vocab_size
        self.bos_id: int = _special_id(tokenizer, "bos_id", BOS_TOKEN, bos_id, vocab_size)
        self.eos_id: int = _special_id(tokenizer, "eos_id", EOS_TOKEN, eos_id, vocab_size)
        self.pad_id: int = _special_id(tokenizer, "pad_id", PAD_TOKEN, pad_id, vocab_size)
        # every token the file marks special (chat markers, ...) too, so that decode skips them all
        marked = (i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special and i < vocab_size)
        self.special_ids: frozenset[int] = frozenset((self.bos_id, self.eos_id, self.pad_id, *marked))
        tokenizer.encode_special_tokens = True  # "text is always text" (module docstring)
        self.backend: Tokenizer = tokenizer

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, *, vocab_size: int | None = None, bos_id: int | None = None,
                  eos_id: int | None = None, pad_id: int | None = None) -> SumiTokenizer:
        """Load ``path``: a ``tokenizer.json`` or a directory holding one (the Hugging Face model layout).

        For the released model, ``from_file(model_dir, vocab_size=SUMI_VOCAB_SIZE)``.
        """
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(
                f"no tokenizer at {file}: download {TOKENIZER_FILE} of {SUMI_REPO} into the model "
                f"directory (next to config.json), or pass --tokenizer with the path of a {TOKENIZER_FILE}")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # the Rust side raises a bare Exception on malformed JSON
            raise ValueError(f"{file} is not a {TOKENIZER_FILE} (a Hugging Face tokenizers JSON file): {err}") from err
        return cls(tokenizer, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)

    @classmethod
    def train_byte_level(cls, texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2) -> SumiTokenizer:
        """Train a byte-level BPE of at most ``vocab_size`` ids on ``texts`` (deterministic).

        The 256 byte symbols come first, then the merges, then the special tokens as the last six
        ids: :data:`CHAT_TOKENS` (``V-6 .. V-4``), then BOS, EOS, pad (``V-3 .. V-1``).  Bytes (not
        characters) plus no normalizer make ``decode(encode(s)) == s`` for every string.  When the
        text runs out of pairs seen ``min_frequency`` times, the vocab is smaller than asked;
        ``vocab_size`` reports what was built.
        """
        specials = [*CHAT_TOKENS, *SPECIAL_TOKENS]  # BOS, EOS, pad last: the layout of tiny(V)
        n_bytes, n_special = len(pre_tokenizers.ByteLevel.alphabet()), len(specials)
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < n_bytes + n_special:
            raise ValueError(f"vocab_size must be an int >= {n_bytes + n_special} "
                             f"({n_bytes} bytes + {n_special} specials), got {vocab_size!r}")
        tokenizer = Tokenizer(models.BPE())
        # No prefix space: it would come back from decode and break the round trip.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - n_special, min_frequency=min_frequency, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte, seen or not: nothing is unknown
            special_tokens=[])
        tokenizer.train_from_iterator(texts, trainer=trainer)
        # Added after training so they take the ids after the merges, as in the released vocab.
        tokenizer.add_special_tokens(specials)
        return cls(tokenizer)

    @classmethod
    def default(cls) -> SumiTokenizer:
        """The embedded default: a 512-id byte-level BPE trained on ``sumi/assets/tiny_corpus.txt``.

        Built once per process (milliseconds); the chat tokens are 506, 507, 508 and BOS, EOS, pad
        509, 510, 511, as ``sumi.configs.tiny()``.
        """
        return _default()

    # -- use ---------------------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        """Token ids of ``text``, with BOS in front when ``add_bos``; never EOS."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        # add_special_tokens=False: the file's own post-processor must not add a second BOS.
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if add_bos else ids

    def encode_batch(self, texts: Iterable[str], add_bos: bool = True) -> list[list[int]]:
        """:meth:`encode` of each text (encoded in parallel by the Rust backend)."""
        if isinstance(texts, str):
            raise TypeError("texts must be an iterable of str, not one str: use encode() for a single text")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
        head = [self.bos_id] if add_bos else []
        return [head + e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (ints, or integer scalars such as a tensor's elements).

        ``skip_special_tokens`` drops every id of :attr:`special_ids`: BOS, EOS, pad and the
        tokenizer's other specials (the chat tokens).  Ids in
        ``[0, vocab_size)`` that no token maps to decode to nothing; ids outside are an error.
        """
        ids = [operator.index(i) for i in ids]
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"ids must lie in [0, vocab_size={self.vocab_size}), got {i}")
        if skip_special_tokens:  # also ids given by hand that the file does not mark special
            ids = [i for i in ids if i not in self.special_ids]
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` to ``path`` (a ``.json`` file, or a directory, created if needed).

        Returns the file written.  Only the tokenizer is saved: ids given by hand and a larger
        model ``vocab_size`` belong in the model's config.json.  The file is replaced atomically:
        an interrupted save leaves the previous file (or none), never a truncated one.
        """
        path = Path(path)
        file = path if path.suffix == ".json" and not path.is_dir() else path / TOKENIZER_FILE
        file.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(file, self.backend.to_str(pretty=True))

    def __setstate__(self, state: dict) -> None:
        # a pickled Tokenizer comes back with encode_special_tokens off (its JSON does not hold the
        # flag), and a copy in another process (sumi data prepare's workers) must encode as this one
        self.__dict__.update(state)
        self.backend.encode_special_tokens = True

    def __repr__(self) -> str:
        return (f"SumiTokenizer(vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def _special_id(tokenizer: Tokenizer, name: str, token: str, value: int | None, vocab_size: int) -> int:
    """``value``, or the id of ``token`` in ``tokenizer``; checked to lie in ``[0, vocab_size)``."""
    if value is None:
        value = tokenizer.token_to_id(token)
        if value is None:
            raise ValueError(f"the tokenizer has no {token!r} token: pass {name}= explicitly")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
        raise ValueError(f"{name} must be an int in [0, vocab_size={vocab_size}), got {value!r}")
    return value


def tiny_corpus() -> str:
    """The embedded English text (~38 KB) behind the default tokenizer and default training data."""
    return resources.files("sumi").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def _default() -> SumiTokenizer:
    return SumiTokenizer.train_byte_level(tiny_corpus().splitlines(keepends=True), DEFAULT_VOCAB_SIZE)
