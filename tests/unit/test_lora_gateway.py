"""LoRA adapters in the gateway: names that reach the base model's pool, tenants' scopes, prefix affinity."""

import dataclasses
import hashlib

import pytest

from lmgate.backends.tasks import Task
from lmgate.backends.types import GenerateRequest
from lmgate.server.cli_serve import lora_flag
from lmgate.server.errors import InvalidRequestError, ModelNotFoundError
from lmgate.server.placement.dispatch import Dispatcher, affinity_key
from lmgate.server.placement.drain import Drain
from lmgate.server.placement.prefix_index import prefix_blocks
from lmgate.server.placement.registry import ModelRegistry
from lmgate.server.settings import validate_settings
from lmgate.server.tenancy.keys import KeyRecord
from lmgate.server.tenancy.quota import TenantQuota
from lmgate.server.tenancy.records import Tenant
from lmgate.server.tenancy.scope import check_model, visible, visible_adapters


@pytest.fixture
def registry():
    settings = validate_settings({"models": [
        {"name": "chat", "aliases": ["default"], "gguf": "chat.gguf",
         "lora_adapters": [{"name": "chat-woof", "path": "woof.gguf"}, {"name": "chat-pirate", "path": "p.gguf"}]},
        {"name": "other", "gguf": "other.gguf"},
    ]})  # fmt: skip
    return ModelRegistry(settings.models)


def tenant(*models: str) -> Tenant:
    record = KeyRecord(name="t", secret_sha256=hashlib.sha256(b"sk").hexdigest(), models=list(models))
    return Tenant(record, TenantQuota(record, now=0.0, clock=lambda: 0.0))


def test_an_adapter_name_reaches_its_base_models_pool(registry):
    assert registry.pool("chat-woof") is registry.pool("chat") is registry.pool("default")
    assert registry.adapter_of("chat-woof") == "chat-woof"
    assert registry.adapter_of("chat") is None and registry.adapter_of("default") is None
    assert registry.pool("chat").adapters == ["chat-woof", "chat-pirate"] and registry.pool("other").adapters == []


def test_a_key_reaches_an_adapter_by_the_adapters_own_name(registry):
    base_only = tenant("chat")
    check_model(registry, "chat", base_only)
    with pytest.raises(ModelNotFoundError):
        check_model(registry, "chat-woof", base_only)
    assert visible_adapters(registry, base_only) == []
    woof_only = tenant("chat-woof")
    check_model(registry, "chat-woof", woof_only)
    with pytest.raises(ModelNotFoundError):
        check_model(registry, "chat", woof_only)
    assert visible(registry, woof_only) == []
    assert [a for _, a in visible_adapters(registry, tenant("chat*"))] == ["chat-woof", "chat-pirate"]


def test_prefix_affinity_keeps_each_adapters_prefixes_apart():
    request = GenerateRequest("r", "chat", prompt="The same long system prompt")
    keys = {affinity_key(dataclasses.replace(request, adapter=a)) for a in (None, "chat-woof", "chat-pirate")}
    assert len(keys) == 3
    blocks = [prefix_blocks(dataclasses.replace(request, adapter=a)) for a in (None, "chat-woof", "chat-pirate")]
    assert len({b[0] for b in blocks}) == 3


def test_serve_lora_flags_become_adapter_entries(tmp_path):
    assert lora_flag("models/tiny-chat-woof.lora.gguf") == {"name": "tiny-chat-woof",
                                                              "path": "models/tiny-chat-woof.lora.gguf"}  # fmt: skip
    assert lora_flag("woof=a/b.gguf") == {"name": "woof", "path": "a/b.gguf"}
    assert lora_flag("dir/x=1.gguf") == {"name": "x-1", "path": "dir/x=1.gguf"}


async def test_embeddings_naming_an_adapter_are_a_400_naming_the_model(registry):
    dispatcher = Dispatcher(registry, Drain(registry, timeout_s=1.0))
    with pytest.raises(InvalidRequestError, match="adapters serve generation only") as caught:
        await dispatcher.choose_pool("chat-woof", Task.EMBED)
    assert caught.value.param == "model"
