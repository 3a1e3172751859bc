"""The front end's pure JavaScript, tested two ways: its own ``node --test`` unit tests (tests/js/), and the
block-weight editor's syntax module against the pack's Python parser (``lora_ops.blocks``), the reference
for what a block-weight text means. Also: the JS tests' block payloads match what the route serves."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest

from testkit import web_workflows as ww
from testkit.host import REPO_ROOT, import_pack

import_pack()
from lora_lab.lora_ops.blocks import BlockWeightsError, parse_block_weights

A, B = 0.8, 0.3
JS_TESTS = REPO_ROOT / "tests" / "js"
ORACLE = JS_TESTS / "tools" / "block_oracle.js"


@pytest.fixture(scope="module")
def presets_file(tmp_path_factory) -> Path:
    return ww.write_user_presets(tmp_path_factory.mktemp("user"))


@pytest.fixture(scope="module")
def payloads(presets_file) -> dict[str, dict]:
    return ww.block_payloads(presets_file)


def user_presets() -> dict[str, str]:
    return {k.upper(): v for k, v in ww.USER_PRESETS.items()}


def oracle(payload: dict, cases: list[dict]) -> list[dict]:
    node = ww.node_binary()
    done = subprocess.run([node, str(ORACLE)], check=False, input=json.dumps({"payload": payload, "cases": cases}),
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == len(cases)
    return answers


def numeric(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    sign = -1.0 if value.startswith("-") else 1.0
    letter = value.lstrip("-")
    given = A if letter.upper() == "A" else B
    return sign * (given / 2 if letter.islower() else given)


def python_vector(text: str, family: str) -> dict[str, float]:
    return parse_block_weights(text, family, a=A, b=B, user_presets=user_presets()).vector


def test_node_unit_tests_pass():
    node = ww.node_binary()
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in JS_TESTS.glob("*.test.js"))
    assert len(files) >= 4, files
    done = subprocess.run([node, "--test", *files], check=False, capture_output=True, text=True, timeout=300,
                          cwd=REPO_ROOT)
    summary = "\n".join(line for line in done.stdout.splitlines() if line.startswith(("# ", "not ok")))
    assert done.returncode == 0, f"node --test failed:\n{done.stdout[-8000:]}\n{done.stderr[-2000:]}"
    assert "# fail 0" in summary and "# pass" in summary, summary


def test_js_fixtures_match_the_route(payloads):
    """tests/js/fixtures hold the route's payloads; LORA_LAB_UPDATE_WEB_FIXTURES=1 rewrites them."""
    stale = []
    for family, payload in payloads.items():
        path = ww.fixture_path(family)
        want = ww.dump_payload(payload)
        if os.environ.get("LORA_LAB_UPDATE_WEB_FIXTURES") == "1":
            path.write_text(want)
        elif not path.exists() or path.read_text() != want:
            stale.append(path.name)
    assert not stale, f"{stale} differ from nodes/routes.py's payload; rerun with LORA_LAB_UPDATE_WEB_FIXTURES=1"


READABLE = {
    "sd1": ["", "IN04-IN08=0.5, M00=0, OUT*=1", "*=0.2, in4-IN06=0.5, OUT05=0.75", "OUTALL, OUT05=0.5",
            "IN04=0.3, OUTALL", "INS", "MIDD, IN05=A, OUT03=-b", "myout, BASE=0", "CLIP_L=0, BASE=0.5",
            "BASE=0.5, CLIP=0.25", "*=A", "IN05-OUT06=0.4", "OUT*=0\nIN*=0.5  # comment, M00=9",
            "1,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1", ",".join(str(i / 10) for i in range(26)),
            ",".join(["1"] * 12 + ["0.1", "0.2", "0.3"] + ["1"] * 12),
            "1,0,0,0,0,0,0,0,0,0,0,1,1,1,1,1,1, IN03=1", "IN05.attn=0, OUT*=0.5", "CLIP*=0.5",
            "SD-INALL", "sd-mout, OUT05=0.5", "SD-LyC-MIDALL", "SD-LyC-OUTALL, M00=0.5",
            ",".join(["1"] * 12 + ["0.1", "0.2", "0.2"] + ["1"] * 12)],
    "sdxl": ["INALL", "MIDALL, OUT00-OUT03=0.25", "CLIP_G=0, IN*=0.5", "1,1,1,1,1,0,0,0,0,0,0,0",
             ",".join(["0.5"] * 21), "OUT*=a", "SDXL-OUTALL", "SDXL-LyC-INALL"],
    "flux": ["DOUBLE", "SINGLE, S05=0.5", "D00-D18=0.5, IN=0, OUT=0", "T5=0, CLIP_L=0.5",
             ",".join(["1"] + ["0.5"] * 19 + ["0"] * 38), ",".join(["0"] * 3 + ["1"] * 58),
             "D03.img=0, D*=0.5", "FLUX-DBL-TAIL", "FLUX-DBL-MID, S05=0.5"],
}
MALFORMED = {
    "sd1": ["IN12=1", "IN08-IN04=1", "IN04=1, 0.5", "IN04", "NOPE", "IN04==1", "IN04=", "1,2,3", "IN04=0,5",
            "D03=1", "IN04=1,,M00=0", "T*=0.5", "SD-BODY:1,1,1", "SDXL-ALL", "#" * 70_000,
            ", ".join(["IN04=1"] * 2001), "inspire: 1,1 0.5", "inspire: %in=1", "inspire: NOSUCH",
            "inspire: 1,0, OUTALL", "inspire: 1, IN99=1", "inspire:", "inspire: OUTALL", "inspire: a:b:1",
            "inspire: SDXL-ALL"],
    "flux": ["IN04=1", "DOUBLE, S38=0"],
}


@pytest.mark.parametrize("family", sorted(READABLE))
def test_read_agrees_with_the_python_parser(payloads, family):
    texts = READABLE[family]
    answers = oracle(payloads[family], [{"op": "read", "text": t} for t in texts])
    for text, answer in zip(texts, answers):
        assert answer["error"] is None, (text, answer["error"])
        vector = python_vector(text, family)
        js = {name: numeric(v) for name, v in answer["values"].items()}
        for name, value in js.items():
            assert value == pytest.approx(vector[name], abs=1e-12), (text, name)
        for enc, entry in answer["encoders"].items():
            assert numeric(entry["value"]) == pytest.approx(vector[enc], abs=1e-12), (text, enc)
        assert set(js) | set(answer["encoders"]) == set(vector), text


@pytest.mark.parametrize("family", sorted(MALFORMED))
def test_malformed_text_is_refused_by_both(payloads, family):
    texts = MALFORMED[family]
    answers = oracle(payloads[family], [{"op": "read", "text": t} for t in texts])
    for text, answer in zip(texts, answers):
        assert answer["error"], text
        with pytest.raises(BlockWeightsError):
            python_vector(text, family)


def test_read_only_text_is_valid_and_says_why(payloads):
    texts = {"IN04=R": "random", "*=U": "random", "HALFA": "HALFA", "ATTNOFF": "ATTNOFF",
             "IN05.attn=0, IN05=0.5": "overridden", "SD-ROUT": "SD-ROUT",
             "inspire: " + ",".join(["1"] * 17): "Inspire Pack", "# x\ninspire: SD-INALL, OUT05=0.5": "Inspire Pack",
             "inspire: MYOUT: R,U,A,b": "Inspire Pack", "inspire: SD-LyC-ALL": "Inspire Pack"}
    answers = oracle(payloads["sd1"], [{"op": "read", "text": t} for t in texts])
    for (text, why), answer in zip(texts.items(), answers):
        assert answer["error"] is None and any(why in r for r in answer["readOnly"]), (text, answer)
        python_vector(text, "sd1")  # valid for the node


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_written_text_means_the_slider_values(payloads, family):
    """Random per-block values -> writeText -> the Python parser reads exactly those values."""
    payload = payloads[family]
    encoders = payload["encoders"]
    names = [n for n in payload["order"] if n not in encoders]
    pool = [0.0, 1.0, 0.5, 0.25, -1.0, 1.5, 0.333, 0.1, "A", "-b"]
    rng = random.Random(family)
    cases = []
    for _ in range(60):
        base = rng.choice(pool[:3])
        values = {n: base for n in names}
        for _ in range(rng.randrange(6)):
            start = rng.randrange(1, len(names))
            value = rng.choice(pool)
            for n in names[start:start + rng.randint(1, 8)]:
                values[n] = value
        if rng.random() < 0.3:
            values["BASE"] = rng.choice(pool)
        encs = {e: {"value": values["BASE"], "explicit": False} for e in encoders}
        if rng.random() < 0.4:
            encs[encoders[-1]] = {"value": rng.choice(pool), "explicit": True}
        cases.append({"op": "write", "values": values, "encoders": encs})
    answers = oracle(payload, cases)
    for case, answer in zip(cases, answers):
        vector = python_vector(answer["text"], family)
        for name, value in case["values"].items():
            assert vector[name] == pytest.approx(numeric(value), abs=1e-12), (answer["text"], name)
        for enc, entry in case["encoders"].items():
            assert vector[enc] == pytest.approx(numeric(entry["value"]), abs=1e-12), (answer["text"], enc)


def test_a_slider_move_changes_one_block_and_keeps_selector_entries(payloads):
    cases = [("OUTALL, IN05.attn=0", "OUT05", 0.5), ("IN05.attn=0, IN06.mlp=0.5, *=0.5", "M00", 0.0),
             ("IN04-IN08=0.5, OUT03.res=0", "BASE", 0.25), ("", "CLIP_L", 0.0), ("CLIP_L=0", "BASE", 0.5),
             (",".join(["1"] * 12 + ["0.1", "0.2", "0.3"] + ["1"] * 12), "IN04", 0.0)]
    answers = oracle(payloads["sd1"], [{"op": "set", "text": t, "block": b, "value": v} for t, b, v in cases])
    for (text, block, value), answer in zip(cases, answers):
        assert "error" not in answer, (text, answer)
        before = parse_block_weights(text, "sd1", user_presets=user_presets())
        after = parse_block_weights(answer["text"], "sd1", user_presets=user_presets())
        expected = dict(before.vector)
        expected[block] = value
        if block == "BASE":
            for enc in ("CLIP_L",):
                if enc not in before.named:
                    expected[enc] = value
        assert after.vector == pytest.approx(expected), (text, answer["text"])
        assert sorted(after.part_entries()) == sorted(before.part_entries()), (text, answer["text"])
