"""The plug-in's lmms-eval methods on hand-made requests: registration, media (several images, a
video, none), batching, `until`, the evaluator's padding requests, each process's place and
device, `loglikelihood` against the model's own log-probabilities, and multi-round generation."""

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import ramp_frames, write_video
from tests.eval.helpers import write_json
from tests.integrations.lmms_eval.conftest import require_lmms_eval

require_lmms_eval()

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.models import get_model  # noqa: E402
from PIL import Image  # noqa: E402

from llavamini.inference import GenerationSettings, generate  # noqa: E402
from llavamini.integrations.lmms_eval import (  # noqa: E402
    PADDING_ONLY,
    LlavaMini,
    process_device,
    process_layout,
    user_conversation,
)

GEN_KWARGS = {"max_new_tokens": 5, "temperature": 0, "do_sample": False}


def _image(colour, size=(40, 30)):
    return Image.new("RGB", size, colour)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Docs with several images, a video, one image and no media."""
    video = tmp_path_factory.mktemp("video") / "ramp.mp4"
    write_video(video, ramp_frames(8, 56, 56, step=30), fps=4)
    return [
        {"visuals": [_image((200, 30, 30)), _image((20, 200, 90), (60, 20))], "text": "Compare."},
        {"visuals": [str(video)], "text": "What happens in the video?"},
        {"visuals": [_image((10, 10, 240))], "text": "What colour is it?"},
        {"visuals": [], "text": "Say something."},
    ]


def _model(tiny_loaded, docs, **kwargs) -> LlavaMini:
    model = LlavaMini(loaded=tiny_loaded, **kwargs)
    model.task_dict = {"local": {"test": docs}}
    return model


def _request(kind: str, arguments: tuple, doc_id: int) -> Instance:
    metadata = {"task": "local", "doc_id": doc_id, "repeats": 1}
    return Instance(request_type=kind, arguments=arguments, idx=0, metadata=metadata)


def _generation_request(doc_id: int, docs, gen_kwargs=GEN_KWARGS) -> Instance:
    arguments = (docs[doc_id]["text"], dict(gen_kwargs), _visuals, doc_id, "local", "test")
    return _request("generate_until", arguments, doc_id)


def _visuals(doc):
    return doc["visuals"]


def _chat_inputs(tiny_loaded, doc):
    """The processor's batch for a doc's user message, with the generation prompt."""
    return tiny_loaded.processor.apply_chat_template(
        user_conversation(doc["text"], doc["visuals"]),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )


def _direct_answer(tiny_loaded, doc, max_new_tokens=5) -> str:
    """The answer of the processor's chat template and `inference.generate`, without lmms-eval."""
    inputs = _chat_inputs(tiny_loaded, doc)
    (answer,) = generate(tiny_loaded, inputs, GenerationSettings(max_new_tokens=max_new_tokens))
    return answer


def test_entry_point_registers_llava_mini_and_its_alias():
    assert get_model("llava_mini") is LlavaMini
    assert get_model("llavamini") is LlavaMini


def test_import_llavamini_imports_nothing_from_lmms_eval():
    code = "import sys, llavamini, llavamini.integrations; print('lmms_eval' in sys.modules)"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert printed.stdout.strip() == "False", printed.stderr


def test_model_args_win_over_the_cli_batch_size(tiny_checkpoint):
    model = LlavaMini.create_from_arg_string(
        f"pretrained={tiny_checkpoint},batch_size=3,device=cpu,dtype=float32",
        {"batch_size": 1, "max_batch_size": None, "device": None},
    )
    assert model.batch_size == 3 and model.device.type == "cpu"
    assert model.model.dtype == torch.float32
    with pytest.raises(ValueError, match="batch_size"):
        LlavaMini.create_from_arg_string(f"pretrained={tiny_checkpoint},batch_size=auto")


def test_media_in_batches_answer_as_the_processor_alone(tiny_loaded, docs):
    direct = [_direct_answer(tiny_loaded, doc) for doc in docs]
    requests = [_generation_request(i, docs) for i in range(len(docs))]
    for batch_size in (1, 3, 4):
        model = _model(tiny_loaded, docs, batch_size=batch_size)
        assert model.generate_until(requests) == direct


def test_until_cuts_the_answer_and_groups_keep_request_order(tiny_loaded, docs):
    direct = _direct_answer(tiny_loaded, docs[2], max_new_tokens=8)
    assert len(direct) > 2
    stop = direct[1:3]  # cut after the first character, wherever it occurs first
    cut = direct.split(stop, 1)[0].strip()
    requests = [
        _generation_request(2, docs, {**GEN_KWARGS, "max_new_tokens": 8, "until": [stop]}),
        _generation_request(2, docs, {**GEN_KWARGS, "max_new_tokens": 8}),
        _generation_request(2, docs, {**GEN_KWARGS, "max_new_tokens": 8, "until": stop}),
    ]
    model = _model(tiny_loaded, docs, batch_size=2)
    assert model.generate_until(requests) == [cut, direct, cut]


def test_padding_requests_are_not_generated(tiny_loaded, docs, monkeypatch):
    model = _model(tiny_loaded, docs, batch_size=2)
    padding = _generation_request(2, docs)
    padding.metadata[PADDING_ONLY] = True  # as lmms-eval's evaluator marks the ones it adds
    requests = [_generation_request(2, docs), padding, _generation_request(0, docs)]
    generated = []
    answer = model.answer
    monkeypatch.setattr(
        model,
        "answer",
        lambda batch, gen_kwargs: generated.extend(batch) or answer(batch, gen_kwargs),
    )
    direct = [_direct_answer(tiny_loaded, docs[i]) for i in (2, 0)]
    assert model.generate_until(requests) == [direct[0], "", direct[1]]
    assert len(generated) == 2


def test_each_process_takes_its_rank_and_its_own_gpu(monkeypatch):
    alone = SimpleNamespace(num_processes=1, process_index=0, local_process_index=0)
    assert process_layout(alone) == (0, 1, 0)  # no process group in this test process
    rank_5 = SimpleNamespace(num_processes=8, process_index=5, local_process_index=1)
    assert process_layout(rank_5) == (5, 8, 1)  # 2 machines x 4 GPUs: rank 5 is GPU 1 of the 2nd
    assert process_device("cuda:0", 1, 1) == "cuda:0"  # one process keeps what it asked for
    assert process_device("cuda", 3, 8) == "cuda:3"
    assert process_device("cuda:0", 3, 8) == "cuda:3"
    assert process_device("cpu", 3, 8) == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert process_device(None, 2, 4) == "cuda:2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert process_device(None, 2, 4) is None  # the best available: the shared CPU or MPS


def test_a_model_alone_is_rank_0_of_1(tiny_loaded, docs):
    model = _model(tiny_loaded, docs)
    assert (model.rank, model.world_size) == (0, 1)


def _logprob_from_the_model_loss(tiny_loaded, doc, continuation: str) -> float:
    """-(cross-entropy of the continuation) x its length, from the model's own `labels` loss."""
    processor = tiny_loaded.processor
    inputs = _chat_inputs(tiny_loaded, doc)
    target = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    prompt_ids = inputs["input_ids"]
    input_ids = torch.cat([prompt_ids, torch.tensor([target])], dim=1)
    labels = torch.cat([torch.full_like(prompt_ids, -100), torch.tensor([target])], dim=1)
    with torch.no_grad():
        output = tiny_loaded.model(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            images=inputs.get("images"),
            labels=labels,
        )
    return -output.loss.item() * len(target)


def _greedy_token(tiny_loaded, doc) -> str:
    """The text of the greedy next token, checked to tokenize back to that one token (longer
    greedy texts of the random tiny model do not)."""
    processor = tiny_loaded.processor
    inputs = _chat_inputs(tiny_loaded, doc)
    ids = tiny_loaded.model.generate(**inputs, max_new_tokens=1, do_sample=False)[0].tolist()
    text = processor.tokenizer.decode(ids)
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    return text


def test_loglikelihood_is_the_models_own_log_probability(tiny_loaded, docs):
    model = _model(tiny_loaded, docs)
    greedy = _greedy_token(tiny_loaded, docs[0])
    other = " a different answer"
    requests = [
        _request("loglikelihood", (docs[0]["text"], greedy, _visuals, 0, "local", "test"), 0),
        _request("loglikelihood", (docs[0]["text"], other, _visuals, 0, "local", "test"), 0),
        _request("loglikelihood", (docs[3]["text"], other, _visuals, 3, "local", "test"), 3),
        _request("loglikelihood", (docs[1]["text"], lambda doc: other, _visuals, 1, "local",
                                   "test"), 1),
    ]  # fmt: skip
    results = model.loglikelihood(requests)
    assert results[0][1] is True and results[1][1] is False
    expected = [
        _logprob_from_the_model_loss(tiny_loaded, docs[0], greedy),
        _logprob_from_the_model_loss(tiny_loaded, docs[0], other),
        _logprob_from_the_model_loss(tiny_loaded, docs[3], other),
        _logprob_from_the_model_loss(tiny_loaded, docs[1], other),
    ]
    assert [logprob for logprob, _ in results] == pytest.approx(expected, abs=1e-4)


def test_multi_round_asks_doc_to_text_for_each_round(tiny_loaded, docs):
    calls = []

    def doc_to_text(doc, previous_output=None, round_idx=None, previous_round_info=None):
        calls.append((list(previous_output), round_idx, previous_round_info))
        follow_up = {"text": f"And then? ({previous_output[-1]})", "visuals": doc["visuals"]}
        return doc["visuals"], follow_up["text"], round_idx == 3, previous_output, round_idx

    model = _model(tiny_loaded, docs)
    arguments = (docs[2]["text"], dict(GEN_KWARGS), _visuals, doc_to_text, 2, "local", "test")
    (rounds,) = model.generate_until_multi_round(
        [_request("generate_until_multi_round", arguments, 2)]
    )
    assert len(rounds) == 3 and rounds[0] == _direct_answer(tiny_loaded, docs[2])
    assert [call[1] for call in calls] == [1, 2, 3]
    assert calls[1] == (rounds[:2], 2, 1)  # each round sees the answers so far and the info
    second = {"text": f"And then? ({rounds[0]})", "visuals": docs[2]["visuals"]}
    assert rounds[1] == _direct_answer(tiny_loaded, second)


def test_video_answers_equal_the_runner(tiny_loaded, tmp_path):
    from llavamini.eval.answers import read_answers
    from llavamini.eval.runner import RunConfig, run_questions
    from llavamini.eval.tasks import get_task
    from llavamini.inference import GenerationSettings, InputSettings
    from llavamini.model.loading import ModelSpec

    task = get_task("msvd_qa")
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "clip1.mp4", ramp_frames(6, 56, 56, step=40), fps=2)
    rows = [{"video_name": "clip1", "question": "what is shown?", "question_id": "v_0"}]
    config = RunConfig(
        task=task,
        model=ModelSpec("tiny", device="cpu", dtype="float32"),
        inputs=InputSettings(conv_mode=tiny_loaded.processor.conv_mode),
        answers_file=str(tmp_path / "answers.jsonl"),
        questions_file=write_json(tmp_path / "test_q.json", rows),
        visual_folder=str(tmp_path / "videos"),
        generation=GenerationSettings(max_new_tokens=5),
        num_workers=0,
    )
    run_questions(config, loaded=tiny_loaded)
    (record,) = read_answers(config.answers_file)
    (question,) = task.read_questions(config.questions_file, config.visual_folder)
    # lmms-eval's context is the task's doc_to_text: here the runner's instruction + question.
    video_docs = [{"visuals": [question.visual], "text": task.question_text(question)}]
    model = _model(tiny_loaded, video_docs)
    answers = model.generate_until([_generation_request(0, video_docs, {"max_new_tokens": 5})])
    assert answers == [record["text"]]
