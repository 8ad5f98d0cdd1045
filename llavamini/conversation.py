"""Chat templates, rendered without a tokenizer or any download (reference.md §3).

`render(template, messages, add_generation_prompt)` returns the prompt string; `messages` is a
list of `(role, text)` with role 'user' or 'assistant'. `TEMPLATES` maps the reference's
`--conv-mode` names to templates.
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


@dataclass(frozen=True)
class ChatTemplate:
    """How one conversation format is written.

    Attributes:
        name: the `--conv-mode` name.
        style: 'llama_3_1', 'vicuna' or 'plain'.
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
}


def get_template(name: str) -> ChatTemplate:
    """The template called `name`; raises `KeyError` listing the known names."""
    if name not in TEMPLATES:
        raise KeyError(f"Unknown conv mode {name!r}; known: {sorted(TEMPLATES)}.")
    return TEMPLATES[name]


def _llama_3_1_header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def render(
    template: ChatTemplate, messages: list[tuple[str, str]], add_generation_prompt: bool = True
) -> str:
    """The prompt string for `messages`; with `add_generation_prompt`, ready for the answer."""
    for role, _ in messages:
        if role not in ("user", "assistant"):
            raise ValueError(f"Message role must be 'user' or 'assistant', got {role!r}.")
    if template.style == "llama_3_1":
        text = "<|begin_of_text|>" + _llama_3_1_header("system") + template.system + "<|eot_id|>"
        for role, content in messages:
            text += _llama_3_1_header(role) + content.strip() + "<|eot_id|>"
        return text + (_llama_3_1_header("assistant") if add_generation_prompt else "")
    if template.style == "vicuna":
        text = template.system + " "
        for role, content in messages:
            if role == "user":
                text += f"USER: {content} "
            else:
                text += f"ASSISTANT: {content}</s>"
        return text + ("ASSISTANT:" if add_generation_prompt else "")
    if template.style == "plain":
        return "".join(
            content + ("\n" if role == "assistant" else "") for role, content in messages
        )
    raise ValueError(f"Unknown template style {template.style!r}.")
