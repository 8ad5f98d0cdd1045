"""The LLM fallback of multiple-choice matching (VLMEvalKit's, for MMBench): when the rules of
`choice.py` cannot read an answer, a judge is asked which option it means, and its reply is
read with the same rules.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from llavamini.eval.metrics.choice import Matcher, infer_choice
from llavamini.eval.metrics.judge import (
    Judge,
    JudgeError,
    JudgeUnreachableError,
    prompt_file_version,
)


@dataclass(frozen=True)
class MatchPrompt:
    """The judge prompt of the LLM fallback: `template.format(question, options, answer)`
    (positional), `template_cn` for questions with Chinese characters, and `options_header`
    put before the "A. text" option lines."""

    template: str = (
        "Match an answer to a multiple-choice question with one of the options. Reply with "
        "the letter of the option whose meaning is closest to the answer, or Z if the answer "
        "means none of them. Reply with one capital letter only.\n"
        "Question: {}\n{}Answer: {}\nYour output: "
    )
    template_cn: str = (
        "请把一道单选题的回答与选项对应起来。输出与回答意思最接近的选项字母；"
        "如果回答与所有选项的意思都不同，输出 Z。只输出一个大写字母。\n"
        "问题: {}\n{}答案: {}\n输出: "
    )
    options_header: str = ""
    version: str = "llavamini-mcq-match-v1"


def load_match_prompt(path: str | None) -> MatchPrompt:
    """`MatchPrompt` from a JSON file with `template`, optional `template_cn` and
    `options_header` (e.g. VLMEvalKit's own texts, for an exact parity run); the default
    prompt when `path` is None."""
    if path is None:
        return MatchPrompt()
    with open(path, encoding="utf-8") as file:
        data = json.load(file)
    if "template" not in data:
        raise ValueError(f"{path}: a match prompt file needs a 'template' key.")
    return MatchPrompt(
        template=data["template"],
        template_cn=data.get("template_cn", data["template"]),
        options_header=data.get("options_header", ""),
        version=prompt_file_version(data),
    )


def _has_chinese(text: str) -> bool:
    return re.search("[\u4e00-\u9fff]", text) is not None


@dataclass
class JudgeFallback:
    """The LLM fallback's judge and settings, and the judgments that failed."""

    judge: Judge
    prompt: MatchPrompt
    matcher: Matcher
    allow_failures: bool
    failed: int = 0

    def letter(self, question: str, choices: dict[str, str], prediction: str) -> str | None:
        """The letter the judge matches `prediction` to (read with the same rules), or None;
        a judgment that keeps failing raises `JudgeError` unless failures are allowed (then
        the answer is wrong, as VLMEvalKit's random pick mostly is)."""
        prompt = self.prompt
        options = prompt.options_header + "".join(f"{k}. {v}\n" for k, v in choices.items())
        template = prompt.template_cn if _has_chinese(question) else prompt.template
        content = template.format(question, options, prediction)
        try:
            reply = self.judge.ask([{"role": "user", "content": content}], str, prompt.version)
        except JudgeUnreachableError:
            raise
        except JudgeError:
            if not self.allow_failures:
                raise
            self.failed += 1
            return None
        return infer_choice(reply, choices, self.matcher)

    def summary(self) -> dict:
        """The judge's summary for a score's JSON, with the judgments that failed."""
        return {**self.judge.summary(self.prompt.version), "judge_failed": self.failed}
