"""The OpenAI API's worker: one thread runs all preprocessing and generation, so concurrent
requests wait their turn in arrival order and never run the model at the same time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import tempfile
from concurrent.futures import ThreadPoolExecutor

from llavamini.model.loading import LoadedModel
from llavamini.serve.api_media import media_file
from llavamini.serve.api_schema import ApiError, Plan, ServerConfig, Turn
from llavamini.serve.session import ChatSession, GenerationCancelled, Reply

logger = logging.getLogger(__name__)


class Backend:
    """The loaded model and the single worker thread that uses it."""

    def __init__(self, loaded: LoadedModel, config: ServerConfig):
        self.loaded = loaded
        self.config = config
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llavamini-generate")
        self.tasks: set[asyncio.Task] = set()

    def keep(self, task: asyncio.Task) -> None:
        """Hold a reference to a background task until it ends (asyncio keeps only weak ones)."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, plan: Plan, on_text=None, cancel=None) -> Reply:
        """Queue `answer` on the worker and wait for it; errors other than `ApiError` and
        cancellation become a 500 `ApiError` (logged with their traceback)."""
        loop = asyncio.get_running_loop()
        job = functools.partial(self.answer, plan, on_text, cancel)
        try:
            return await loop.run_in_executor(self.executor, job)
        except (ApiError, GenerationCancelled):
            raise
        except Exception as error:
            logger.exception("Generation failed")
            raise ApiError(
                500, f"Internal error: {type(error).__name__}: {error}", error_type="server_error"
            ) from error

    def answer(self, plan: Plan, on_text=None, cancel=None) -> Reply:
        """Build the conversation (decoding its media) and answer its last user message."""
        session = self.session(plan)
        try:
            return session.ask(plan.turns[-1].text, on_text=on_text, cancel=cancel)
        except ValueError as error:  # prompt too long for the context, '<image>' in the text
            raise ApiError(400, str(error), param="messages") from error

    def session(self, plan: Plan) -> ChatSession:
        """A `ChatSession` holding the plan's conversation up to its last user message, whose
        media are attached (decoded and processed) and pending."""
        session = ChatSession(
            self.loaded,
            plan.template,
            plan.settings,
            fps=self.config.video_fps,
            max_frames=self.config.video_max_frames,
            system=plan.system,
        )
        with tempfile.TemporaryDirectory(prefix="llavamini-serve-") as folder:
            for turn in plan.turns:
                for kind, url, param in turn.media:
                    self._attach(session, kind, url, param, folder)
                if turn is not plan.turns[-1]:
                    self._add_turn(session, turn)
        return session

    def _attach(self, session, kind: str, url: str, param: str, folder: str) -> None:
        path = media_file(kind, url, param, self.config, folder)
        try:
            session.attach(path, kind)
        except FileNotFoundError as error:
            raise ApiError(400, str(error), param=param, code="file_not_found") from error
        except ValueError as error:
            # Point at the request field rather than the server's temporary file.
            message = (
                str(error).replace(path, "<upload>") if path.startswith(folder) else str(error)
            )
            raise ApiError(400, f"Cannot use this {kind}: {message}", param=param) from error

    @staticmethod
    def _add_turn(session, turn: Turn) -> None:
        try:
            session.add_turn(turn.role, turn.text)
        except ValueError as error:
            raise ApiError(400, str(error), param="messages") from error
