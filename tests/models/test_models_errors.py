"""Errors through each real SDK: no secret in any message, auth failures permanent and never
retried, Retry-After honoured, empty replies transient, and wrapped output accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from _vendor_fakes import (
    PLAN,
    PLAN_JSON,
    SECRET,
    Canned,
    FakeServer,
    anthropic_body,
    anthropic_error,
    gemini_body,
    gemini_error,
    openai_body,
    openai_error,
    plan_request,
)

from swarmbus.agents.models import (
    AnthropicModel,
    GoogleModel,
    Model,
    ModelError,
    ModelSpec,
    OpenAIModel,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderEmptyReplyError,
    ProviderError,
    ProviderRateLimitError,
    ProviderServerError,
    RefusalError,
    build_model,
)
from swarmbus.bus import MASK, scrub

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

RETRY_ANYWAY = {"x-should-retry": "true"}  # a proxy asking the SDK to retry a 401


def openai(fake: FakeServer, **kw: object) -> Model:
    return build_model(ModelSpec(name="openai:gpt-4o", base_url=fake.url + "/v1", **kw))


def anthropic(fake: FakeServer, **kw: object) -> Model:
    return build_model(ModelSpec(name="anthropic:claude-haiku-4-5", base_url=fake.url, **kw))


def gemini(fake: FakeServer, **kw: object) -> Model:
    return build_model(ModelSpec(name="google:gemini-2.5-flash", base_url=fake.url, **kw))


async def fail(model: Model, error: type[ModelError] = ModelError) -> ModelError:
    async with model:
        with pytest.raises(error) as caught:
            await model.complete(plan_request())
    return caught.value


def no_secret_anywhere(err: BaseException) -> None:
    texts = [str(err), repr(err), *(str(a) for a in err.args)]
    texts += [str(v) for v in vars(err).values()]
    assert all(SECRET not in t for t in texts)
    assert err.__cause__ is None  # SDK errors (holding the request and its key) are not chained


# -- 5 and 6: secrets, and auth failures -------------------------------------------------


async def test_openai_401_echoing_the_key(fake: FakeServer, fake_keys: str) -> None:
    echoed = {"error": {"message": f"Incorrect API key provided: {SECRET}.", "type": "auth"}}
    fake.default = Canned(echoed, status=401, headers=RETRY_ANYWAY)
    err = await fail(openai(fake, max_retries=3), ProviderAuthError)
    no_secret_anywhere(err)
    assert MASK in str(err) and "OPENAI_API_KEY" in str(err) and "openai" in str(err)
    assert err.permanent and len(fake.requests) == 1  # not retried, not even on request


async def test_anthropic_403_echoing_a_prefix_of_the_key(fake: FakeServer, fake_keys: str) -> None:
    fake.default = anthropic_error(403, "permission_error", message=f"key {SECRET[:16]}... denied",
                                   headers=RETRY_ANYWAY)
    err = await fail(anthropic(fake, max_retries=3), ProviderAuthError)
    no_secret_anywhere(err)
    assert SECRET[:16] not in str(err) and "ANTHROPIC_API_KEY" in str(err)
    assert err.permanent and len(fake.requests) == 1


async def test_gemini_invalid_key_is_an_auth_error(fake: FakeServer, fake_keys: str) -> None:
    body = gemini_error(400, "INVALID_ARGUMENT", message=f"API key not valid: {SECRET}").body
    body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                 "reason": "API_KEY_INVALID"}]
    fake.default = Canned(body, 400)
    err = await fail(gemini(fake, max_retries=3), ProviderAuthError)
    no_secret_anywhere(err)
    assert "GEMINI_API_KEY" in str(err) and err.permanent and len(fake.requests) == 1


async def test_a_key_from_a_file_is_registered_and_named(
    fake: FakeServer, no_keys: None, tmp_path: Path
) -> None:
    key = "sk-from-a-file-" + tmp_path.name.replace("_", "-") + "-0123456789"
    path = tmp_path / "openai.key"
    path.write_text(key + "\n")
    model = build_model(ModelSpec(name="openai:gpt-4o", base_url=fake.url + "/v1",
                                  api_key_file=path))
    assert scrub(f"echo {key}") == f"echo {MASK}"  # registered when read, before any call
    fake.default = Canned({"error": {"message": f"bad key {key}"}}, status=401)
    err = await fail(model, ProviderAuthError)
    assert key not in str(err) and str(path) in str(err)
    assert fake.requests[0].headers["authorization"] == f"Bearer {key}"


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_bad_requests_and_unknown_models_are_permanent(
    fake: FakeServer, fake_keys: str, status: int
) -> None:
    fake.default = openai_error(status, "The model `gpt-9` does not exist")
    err = await fail(openai(fake, max_retries=2), ProviderBadRequestError)
    assert err.permanent and len(fake.requests) == 1


@pytest.mark.parametrize(
    ("canned", "error"),
    [(openai_error(429), ProviderRateLimitError), (openai_error(500), ProviderServerError),
     (Canned(openai_body(PLAN_JSON), delay_s=5), ProviderError)],
    ids=["429", "500", "timeout"],
)
async def test_outages_are_transient(
    fake: FakeServer, fake_keys: str, canned: Canned, error: type[ModelError]
) -> None:
    fake.default = canned
    err = await fail(openai(fake, max_retries=0, timeout_s=0.3), error)
    assert not err.permanent and err.usage.calls == 0


async def test_a_wrong_base_url_is_transient_connection_error(fake_keys: str) -> None:
    err = await fail(openai_at("http://127.0.0.1:9/v1"), ProviderError)
    assert not err.permanent and "cannot connect" in str(err)


def openai_at(url: str) -> Model:
    return OpenAIModel("gpt-4o", base_url=url, max_retries=0)


# -- 9: rate limits are honoured ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "seconds"),
    [(429, {"retry-after": "7"}, 7.0), (503, {"retry-after-ms": "1500"}, 1.5),
     (429, {"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0)],
    ids=["seconds", "ms", "date-in-the-past"],
)
async def test_openai_retry_after(
    fake: FakeServer, fake_keys: str, status: int, headers: dict[str, str], seconds: float
) -> None:
    fake.default = openai_error(status, headers=headers)
    err = await fail(openai(fake, max_retries=0), ProviderError)
    assert isinstance(err, ProviderError) and err.retry_after_s == pytest.approx(seconds)
    assert not err.permanent


async def test_anthropic_retry_after(fake: FakeServer, fake_keys: str) -> None:
    fake.default = anthropic_error(429, "rate_limit_error", headers={"retry-after": "3"})
    err = await fail(anthropic(fake, max_retries=0), ProviderRateLimitError)
    assert isinstance(err, ProviderError) and err.retry_after_s == 3.0


async def test_gemini_retry_info_and_header(fake: FakeServer, fake_keys: str) -> None:
    fake.default = gemini_error(429, "RESOURCE_EXHAUSTED", retry_delay="7s")
    err = await fail(gemini(fake, max_retries=0), ProviderRateLimitError)
    assert isinstance(err, ProviderError) and err.retry_after_s == 7.0
    fake.default = gemini_error(503, headers={"retry-after": "2"})
    err = await fail(gemini(fake, max_retries=0), ProviderServerError)
    assert isinstance(err, ProviderError) and err.retry_after_s == 2.0


async def test_no_retry_after_is_none(fake: FakeServer, fake_keys: str) -> None:
    fake.default = openai_error(500, headers={})
    err = await fail(openai(fake, max_retries=0), ProviderServerError)
    assert isinstance(err, ProviderError) and err.retry_after_s is None


# -- 10: an empty reply is a glitch, not a refusal -----------------------------------------


async def test_openai_no_choices_is_transient(fake: FakeServer, fake_keys: str) -> None:
    fake.default = Canned(openai_body(None, choices=False, prompt_tokens=50))
    err = await fail(openai(fake), ProviderEmptyReplyError)
    assert not err.permanent and err.usage.calls == 1 and err.usage.input_tokens == 50
    assert not isinstance(err, RefusalError)


@pytest.mark.parametrize("raw, content_type", [
    (b"<html>502 gateway error</html>", "text/html"),
    (b"<html>502 gateway error</html>", "application/json"),
    (b'{"id": "x"', "application/json"),
])
async def test_a_200_that_is_no_response_is_a_transient_provider_error(
    fake: FakeServer, fake_keys: str, raw: bytes, content_type: str
) -> None:
    """A gateway's page or broken JSON with status 200, through each vendor's SDK: a
    typed, transient error saying so (retried later), never a crash of the handler."""
    for model in (openai(fake), anthropic(fake), gemini(fake)):
        fake.default = Canned(None, raw=raw, content_type=content_type)
        err = await fail(model, ProviderError)
        assert not err.permanent and "could not be read as a" in str(err), err
        assert SECRET not in str(err)


async def test_gemini_no_candidates_is_transient_a_block_is_a_refusal(
    fake: FakeServer, fake_keys: str
) -> None:
    fake.default = Canned(gemini_body(None, candidates=False, usage=False))
    err = await fail(gemini(fake), ProviderEmptyReplyError)
    assert not err.permanent and err.usage.calls == 0  # no usage: nothing known to be billed
    fake.default = Canned(gemini_body(None, block_reason="SAFETY"))
    refusal = await fail(gemini(fake), RefusalError)
    assert refusal.permanent and refusal.usage.calls == 1


# -- 11: right but wrapped output needs no paid repair -------------------------------------


@pytest.mark.parametrize(
    "text",
    [f"```json\n{PLAN_JSON}\n```", f"```\n{PLAN_JSON}\n```",
     f"Sure! Here is the plan:\n\n{PLAN_JSON}\n",
     f"Here you go:\n```json\n{PLAN_JSON}\n```"],
    ids=["fenced-json", "fenced", "prose-then-object", "prose-then-fence"],
)
async def test_wrapped_json_is_accepted_without_repair(
    fake: FakeServer, fake_keys: str, text: str
) -> None:
    fake.push(Canned(openai_body(text)))
    async with openai(fake) as model:
        response = await model.complete(plan_request())
    assert response.output == PLAN and len(fake.requests) == 1
    assert response.provenance.calls == 1


async def test_two_objects_or_prose_after_still_need_a_repair(
    fake: FakeServer, fake_keys: str
) -> None:
    fake.push(Canned(openai_body(f"{PLAN_JSON}\n{PLAN_JSON}")), Canned(openai_body(PLAN_JSON)))
    fake.push(Canned(openai_body(f"{PLAN_JSON}\nHope this helps!")), Canned(openai_body(PLAN_JSON)))
    async with openai(fake) as model:
        await model.complete(plan_request())
        await model.complete(plan_request())
    assert len(fake.requests) == 4


async def test_anthropic_tool_input_as_a_json_string(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(anthropic_body(tool_input=PLAN_JSON, stop_reason="tool_use")))
    async with AnthropicModel("claude-3-5-haiku-latest", base_url=fake.url) as model:
        response = await model.complete(plan_request())
    assert response.output == PLAN and len(fake.requests) == 1


async def test_gemini_fenced_json(fake: FakeServer, fake_keys: str) -> None:
    fake.push(Canned(gemini_body(f"```json\n{PLAN_JSON}\n```")))
    async with GoogleModel("gemini-2.5-flash", base_url=fake.url) as model:
        assert (await model.complete(plan_request())).output == PLAN
    assert len(fake.requests) == 1
