"""Chatting with and serving LLaVA-Mini: `ChatSession`, the `chat` and `serve` commands, and an
optional Gradio demo. Everything generates through `ChatSession.ask`."""
