"""Drives Steer through the Envoy stand-in with the official openai SDK.

Usage: python openai_sdk_check.py http://127.0.0.1:PORT
Exits non-zero (with the reason) on the first mismatch.
"""
import sys

import openai

base = sys.argv[1].rstrip("/") + "/v1"
client = openai.OpenAI(base_url=base, api_key="sk-test-never-logged", max_retries=0)

models = sorted(m.id for m in client.models.list())
assert models == ["llama", "qwen"], models

chat = client.chat.completions.create(
    model="qwen",
    messages=[{"role": "user", "content": "Say hello"}],
    max_tokens=5,
)
assert chat.choices[0].message.content, chat
assert chat.usage.completion_tokens == 5, chat.usage

raw = client.chat.completions.with_raw_response.create(
    model="llama", messages=[{"role": "user", "content": "hi"}], max_tokens=2
)
assert raw.headers.get("target-pod"), dict(raw.headers)

stream = client.chat.completions.create(
    model="qwen",
    messages=[{"role": "user", "content": "Stream please"}],
    max_tokens=6,
    stream=True,
    stream_options={"include_usage": True},
)
pieces, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        pieces.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage
assert len(pieces) == 6, pieces
assert usage and usage.completion_tokens == 6, usage

completion = client.completions.create(model="llama", prompt="Once upon", max_tokens=3)
assert completion.choices[0].text, completion

try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.status_code == 404
    assert "nope" in str(e), e

try:
    client.chat.completions.create(
        model="qwen",
        messages=[{"role": "user", "content": "x"}],
        extra_headers={"routing-strategy": "fastest"},
    )
    raise AssertionError("unknown strategy accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400
    assert "fastest" in str(e), e

print("openai SDK check passed")
