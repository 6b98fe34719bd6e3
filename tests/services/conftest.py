"""One embedded Ray cluster on 127.0.0.1 for every test that needs one (startup takes seconds)."""

import pytest
import ray


@pytest.fixture(scope="session")
def ray_session():
    if not ray.is_initialized():
        env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}
        ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False,
                 namespace="raylign-tests", runtime_env={"env_vars": env}, log_to_driver=False)
    yield ray
    ray.shutdown()
