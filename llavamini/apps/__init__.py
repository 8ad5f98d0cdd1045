"""Applications built on the library, apart from it (as torchtune keeps its recipes): each is a
`llavamini` command (`llavamini.cli.COMMANDS`), and the library never imports them.

- `quickstart`: train, evaluate and chat with a tiny LLaVA-Mini from scratch (and the ablation);
- `demo`: a tiny random checkpoint answering about an image; `tiny-assets` for the tiny recipes.

`tiny` (tiny random models and tokenizers) and `synthetic` (the shapes data) are what these apps,
and the tests, build on; they add no sub-command.
"""
