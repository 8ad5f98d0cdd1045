"""Chat templates as Jinja, rendered without any download (docs/compatibility.md K10).

Every conv mode is a Jinja chat template, the form transformers, vLLM and lmms-eval read: the
named ones are in `TEMPLATES`; 'chat_template' is the tokenizer's own. A template renders
messages whose content is a string with `<image>` / `<video>` placeholders already in it
(`LlavaMiniProcessor.apply_chat_template` turns transformers' content parts into such strings).

`render(template, messages, add_generation_prompt)` returns the prompt string;
`render_with_spans` also returns the character spans a model is trained on (each assistant answer
with its end marker), from which `llavamini.data.tokenization` builds labels. `messages` is a list
of `(role, text)` with role 'user' or 'assistant'. A span is what the template adds between the
conversation up to a question (with the generation prompt) and up to its answer, so a template
must render prefixes of a conversation as prefixes of its text.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers.utils.chat_template_utils import render_jinja_template

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

# A leading system message replaces the default system prompt written into each template.
_SYSTEM = (
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] -%}{%- set messages = messages[1:] -%}"
    "{%- else -%}{%- set system = '@SYSTEM@' -%}{%- endif -%}"
)

LLAMA_3_1_JINJA = (
    _SYSTEM.replace("@SYSTEM@", LLAMA_3_1_SYSTEM)
    + "{{- '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\\n\\n' + system"
    " + '<|eot_id|>' -}}"
    "{%- for message in messages -%}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)
"""The release's format (LLaVA-Mini's `conv_llava_llama_3_1`): contents stripped."""

VICUNA_V1_JINJA = (
    _SYSTEM.replace("@SYSTEM@", VICUNA_SYSTEM.replace("'", "\\'")) + "{{- system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + message['content'] + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + message['content'] + '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)
"""LLaVA-1.5's Vicuna format. The space after 'ASSISTANT:' joins the answer's first token
(SentencePiece and byte-level BPE alike), so it belongs to the supervised span."""

PLAIN_JINJA = (
    "{%- for message in messages if message['role'] != 'system' -%}"
    "{%- if message['role'] == 'user' -%}{{- message['content'] -}}"
    "{%- else -%}{{- message['content'] + '\\n' -}}{%- endif -%}"
    "{%- endfor -%}"
)
"""Stage-1 captions: `<image>` then the caption and a newline (no roles, no system)."""


@dataclass(frozen=True)
class ChatTemplate:
    """How one conversation format is written.

    Attributes:
        name: the `--conv-mode` name.
        jinja: the Jinja chat template; None for 'chat_template', the tokenizer's own.
        system: the system prompt passed as a leading system message ('' for none; the named
            templates fall back to the default written into them when there is none).
        stop_strings: strings that end an assistant turn (generation stops on their tokens).
    """

    name: str
    jinja: str | None
    system: str
    stop_strings: tuple[str, ...]

    def chat_template(self, tokenizer=None) -> str:
        """The Jinja source this template renders with (the tokenizer's for 'chat_template')."""
        if self.jinja is not None:
            return self.jinja
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "conv mode 'chat_template' needs a tokenizer that has a chat template."
            )
        return tokenizer.chat_template


TEMPLATES: dict[str, ChatTemplate] = {
    "llava_llama_3_1": ChatTemplate(
        "llava_llama_3_1", LLAMA_3_1_JINJA, LLAMA_3_1_SYSTEM, ("<|eot_id|>", "<|end_of_text|>")
    ),
    "vicuna_v1": ChatTemplate("vicuna_v1", VICUNA_V1_JINJA, VICUNA_SYSTEM, ("</s>",)),
    "plain": ChatTemplate("plain", PLAIN_JINJA, "", ("\n",)),
    "chat_template": ChatTemplate("chat_template", None, "", ()),
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


def template_for_call(
    chat_template: str | ChatTemplate | None, default: ChatTemplate
) -> ChatTemplate:
    """The template one call asks for: `default` when None, a `ChatTemplate`, a `TEMPLATES`
    name, or Jinja source (which keeps `default`'s stop strings)."""
    if chat_template is None:
        return default
    if isinstance(chat_template, ChatTemplate):
        return chat_template
    if chat_template in TEMPLATES:
        return get_template(chat_template)
    return ChatTemplate("custom", chat_template, "", default.stop_strings)


def render(
    template: ChatTemplate,
    messages: list[tuple[str, str]],
    add_generation_prompt: bool = True,
    tokenizer=None,
) -> str:
    """The prompt string for `messages`; with `add_generation_prompt`, ready for the answer.

    `tokenizer` is needed only by 'chat_template' (and supplies the special tokens a tokenizer's
    template may name).
    """
    _check_roles(messages)
    return _render(template, messages, add_generation_prompt, tokenizer)


def render_with_spans(
    template: ChatTemplate,
    messages: list[tuple[str, str]],
    add_generation_prompt: bool = False,
    tokenizer=None,
) -> tuple[str, list[Span]]:
    """The conversation text and the `[start, end)` character spans of what is supervised:
    each assistant answer and the marker that ends it (`<|eot_id|>`, `</s>`, ...)."""
    _check_roles(messages)
    spans = []
    for index, (role, _) in enumerate(messages):
        if role == "assistant":
            before = _render(template, messages[:index], True, tokenizer)
            after = _render(template, messages[: index + 1], False, tokenizer)
            if not after.startswith(before):
                raise ValueError(
                    f"Chat template {template.name!r} does not render a conversation's prefix as "
                    f"a prefix of its text, so answer spans cannot be found: use a named conv "
                    f"mode."
                )
            spans.append((len(before), len(after)))
    return _render(template, messages, add_generation_prompt, tokenizer), spans


def _check_roles(messages: list[tuple[str, str]]) -> None:
    for role, _ in messages:
        if role not in ("user", "assistant"):
            raise ValueError(f"Message role must be 'user' or 'assistant', got {role!r}.")


def _render(template, messages, add_generation_prompt, tokenizer) -> str:
    chat = [{"role": role, "content": content} for role, content in messages]
    # A named template always gets its system message, so that '' means no system prompt
    # rather than the default written into the template.
    if template.system or template.jinja is not None:
        chat.insert(0, {"role": "system", "content": template.system})
    if not chat:
        return ""  # a tokenizer's template may refuse an empty conversation
    special_tokens = tokenizer.special_tokens_map if tokenizer is not None else {}
    rendered, _ = render_jinja_template(
        [chat],
        chat_template=template.chat_template(tokenizer),
        add_generation_prompt=add_generation_prompt,
        **special_tokens,
    )
    return rendered[0]
