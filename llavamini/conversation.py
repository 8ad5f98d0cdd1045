"""Chat templates, rendered without any download (reference.md §3).

`render(template, messages, add_generation_prompt)` returns the prompt string;
`render_with_spans` also returns the character spans a model is trained on (each assistant answer
with its end marker), from which `llavamini.data.tokenization` builds labels. `messages` is a list
of `(role, text)` with role 'user' or 'assistant'. `TEMPLATES` maps `--conv-mode` names to
templates; 'chat_template' renders with the tokenizer's own Jinja chat template.
"""

from __future__ import annotations

from dataclasses import dataclass

LLAMA_3_1_SYSTEM = (
    "You are a helpful language and vision assistant. You are able to understand the visual "
    "content that the user provides, and assist the user with a variety of tasks using natural "
    "language."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions."
)

Span = tuple[int, int]


@dataclass(frozen=True)
class ChatTemplate:
    """How one conversation format is written.

    Attributes:
        name: the `--conv-mode` name.
        style: 'llama_3_1', 'vicuna', 'plain' or 'chat_template' (the tokenizer's own).
        system: the system prompt ('' for none).
        stop_strings: strings that end an assistant turn (generation stops on their tokens).
    """

    name: str
    style: str
    system: str
    stop_strings: tuple[str, ...]


TEMPLATES: dict[str, ChatTemplate] = {
    "llava_llama_3_1": ChatTemplate(
        "llava_llama_3_1", "llama_3_1", LLAMA_3_1_SYSTEM, ("<|eot_id|>", "<|end_of_text|>")
    ),
    "vicuna_v1": ChatTemplate("vicuna_v1", "vicuna", VICUNA_SYSTEM, ("</s>",)),
    "plain": ChatTemplate("plain", "plain", "", ("\n",)),
    "chat_template": ChatTemplate("chat_template", "chat_template", "", ()),
}


LLAMA_3_HEADER_TOKEN = "<|start_header_id|>"


def default_template_name(tokenizer) -> str:
    """The conv mode for a checkpoint that does not name one (LLaVA-Mini configs never do).

    Rule: 'llava_llama_3_1' when the tokenizer has the Llama-3 header token (the release and
    every Llama-3.x base); else 'chat_template' when it has a chat template of its own (Qwen2/3
    and most newer LLMs); else 'vicuna_v1' (LLaVA-1.5's Vicuna bases).
    """
    token_id = tokenizer.convert_tokens_to_ids(LLAMA_3_HEADER_TOKEN)
    if token_id is not None and token_id != tokenizer.unk_token_id:
        return "llava_llama_3_1"
    if getattr(tokenizer, "chat_template", None):
        return "chat_template"
    return "vicuna_v1"


def get_template(name: str) -> ChatTemplate:
    """The template called `name`; raises `KeyError` listing the known names."""
    if name not in TEMPLATES:
        raise KeyError(f"Unknown conv mode {name!r}; known: {sorted(TEMPLATES)}.")
    return TEMPLATES[name]


def render(
    template: ChatTemplate,
    messages: list[tuple[str, str]],
    add_generation_prompt: bool = True,
    tokenizer=None,
) -> str:
    """The prompt string for `messages`; with `add_generation_prompt`, ready for the answer."""
    return render_with_spans(template, messages, add_generation_prompt, tokenizer)[0]


def render_with_spans(
    template: ChatTemplate,
    messages: list[tuple[str, str]],
    add_generation_prompt: bool = False,
    tokenizer=None,
) -> tuple[str, list[Span]]:
    """The conversation text and the `[start, end)` character spans of what is supervised:
    each assistant answer and the marker that ends it (`<|eot_id|>`, `</s>`, ...).

    `tokenizer` is needed only by the 'chat_template' style.
    """
    for role, _ in messages:
        if role not in ("user", "assistant"):
            raise ValueError(f"Message role must be 'user' or 'assistant', got {role!r}.")
    if template.style == "chat_template":
        return _render_tokenizer_template(template, messages, add_generation_prompt, tokenizer)
    writer = _WRITERS.get(template.style)
    if writer is None:
        raise ValueError(f"Unknown template style {template.style!r}.")
    return writer(template, messages, add_generation_prompt)


class _Builder:
    """Accumulates text, remembering which pieces are supervised."""

    def __init__(self):
        self.text, self.spans = "", []

    def add(self, piece: str, supervised: bool = False) -> None:
        if supervised and piece:
            self.spans.append((len(self.text), len(self.text) + len(piece)))
        self.text += piece


def _llama_3_1_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def _write_llama_3_1(template, messages, add_generation_prompt):
    out = _Builder()
    out.add("<|begin_of_text|>" + _llama_3_1_header("system") + template.system + "<|eot_id|>")
    for role, content in messages:
        out.add(_llama_3_1_header(role))
        out.add(content.strip() + "<|eot_id|>", supervised=role == "assistant")
    if add_generation_prompt:
        out.add(_llama_3_1_header("assistant"))
    return out.text, out.spans


def _write_vicuna(template, messages, add_generation_prompt):
    out = _Builder()
    out.add(template.system + " ")
    for role, content in messages:
        if role == "user":
            out.add(f"USER: {content} ")
        else:
            # The space joins the answer's first token (SentencePiece and byte-level BPE alike),
            # so it belongs to the supervised span.
            out.add("ASSISTANT:")
            out.add(" " + content + "</s>", supervised=True)
    if add_generation_prompt:
        out.add("ASSISTANT:")
    return out.text, out.spans


def _write_plain(template, messages, add_generation_prompt):
    """Stage-1 captions: `<image>` then the caption and a newline (no roles, no system)."""
    out = _Builder()
    for role, content in messages:
        out.add(content + "\n" if role == "assistant" else content, supervised=role == "assistant")
    return out.text, out.spans


_WRITERS = {"llama_3_1": _write_llama_3_1, "vicuna": _write_vicuna, "plain": _write_plain}


def _render_tokenizer_template(template, messages, add_generation_prompt, tokenizer):
    """Render with `tokenizer.apply_chat_template`; an answer's span is what the template adds
    between the conversation up to the question (with the generation prompt) and up to the
    answer, so the template must render prefixes of a conversation as prefixes of its text."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ValueError("conv mode 'chat_template' needs a tokenizer that has a chat template.")
    chat = [{"role": "system", "content": template.system}] if template.system else []

    def apply(turns, generation_prompt):
        return tokenizer.apply_chat_template(
            chat + turns, tokenize=False, add_generation_prompt=generation_prompt
        )

    turns, spans = [], []
    for role, content in messages:
        if role == "assistant":
            before = apply(turns, True)
            after = apply(turns + [{"role": role, "content": content}], False)
            if not after.startswith(before):
                raise ValueError(
                    "The tokenizer's chat template does not render a conversation's prefix as a "
                    "prefix of its text, so answer spans cannot be found: use a named conv mode."
                )
            spans.append((len(before), len(after)))
        turns.append({"role": role, "content": content})
    return apply(turns, add_generation_prompt), spans
