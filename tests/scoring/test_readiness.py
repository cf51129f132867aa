"""Readiness from the Serve controller's details, in the shape `get_serve_instance_details()` returns."""

from __future__ import annotations

from scoring.readiness import (
    PLACEMENT_GRACE_S,
    PLACEMENT_GRACE_WITHOUT_DEMANDS_S,
    ClusterResources,
    application_readiness,
    startup_error,
    timeout_message,
)

NOW = 1_000_000.0
NEEDS = {
    "minilm": ("Encoder-minilm", "Scorer"),
    "qwen": ("Generative-qwen",),
    "both": ("Encoder-minilm", "Scorer", "Generative-qwen"),
}
QWEN = {"qwen": ("Generative-qwen",)}
TRACEBACK = (
    "ray::ServeReplica:app:Encoder-minilm.initialize_and_get_metadata() (pid=1, ip=127.0.0.1)\n"
    '  File "deployments/encoder.py", line 40, in __init__\n'
    "OSError: /nonexistent/weights does not appear to have a file named config.json\n"
)


def replica(state: str, node: str | None = "node-1", started: float = NOW - 12) -> dict:
    return {"state": state, "node_id": node, "start_time_s": started}


def deployment(*replicas: dict, status: str = "UPDATING", message: str = "", required=None, target: int = 1) -> dict:
    return {
        "status": status,
        "message": message,
        "replicas": list(replicas),
        "target_num_replicas": target,
        "required_resources": required or {"CPU": 0.25, "memory": 0},
    }


def app(**deployments: dict) -> dict:
    return {"deployments": {name.replace("_", "-"): d for name, d in deployments.items()}}


def ready(**more: dict) -> dict:
    return app(Ingress=deployment(replica("RUNNING")), Scorer=deployment(replica("RUNNING")), **more)


def test_every_deployment_running_is_ok():
    look = application_readiness(
        ready(Encoder_minilm=deployment(replica("RUNNING")), Generative_qwen=deployment(replica("RUNNING"))), NEEDS, NOW
    )
    assert look.ready and look.status == "ok"
    assert {m.state for m in look.models.values()} == {"ready"}


def test_an_engine_still_loading_is_starting_for_its_models_only():
    running = deployment(replica("RUNNING"))
    apps = ready(Encoder_minilm=deployment(replica("STARTING")), Generative_qwen=running)
    look = application_readiness(apps, NEEDS, NOW)
    assert not look.ready and look.status == "starting"
    assert look.models["minilm"].state == "starting" and look.models["both"].state == "starting"
    assert look.models["minilm"].reason == "Encoder-minilm is starting: its replica is initializing for 12s"
    assert look.models["qwen"].state == "ready"


def test_one_running_replica_serves_while_another_cannot_be_placed():
    encoder = deployment(replica("RUNNING"), replica("STARTING", node=None), status="UPSCALING", target=2)
    apps = ready(Encoder_minilm=encoder, Generative_qwen=deployment(replica("RUNNING")))
    assert application_readiness(apps, NEEDS, NOW).ready


def test_more_than_the_cluster_has_is_unplaceable_at_once():
    pending = deployment(replica("STARTING", node=None, started=NOW - 0.5), required={"CPU": 64})
    resources = ClusterResources(total={"CPU": 8.0}, free={"CPU": 7.0})
    apps = ready(Encoder_minilm=deployment(replica("RUNNING")), Generative_qwen=pending)
    look = application_readiness(apps, NEEDS, NOW, resources)
    assert look.status == "unavailable" and look.models["minilm"].state == "ready"
    assert look.models["qwen"].state == "unplaceable"
    assert look.models["qwen"].reason == (
        'Generative-qwen cannot be placed: each replica needs {"CPU": 64.0}; the cluster has {"CPU": 8.0} in all'
    )


def test_a_custom_resource_no_node_has_is_unplaceable():
    pending = deployment(replica("STARTING", node=None), required={"CPU": 0.25, "gpu_node": 1})
    look = application_readiness(ready(Generative_qwen=pending), QWEN, NOW, ClusterResources({"CPU": 2}, {"CPU": 2}))
    assert '"gpu_node": 0.0' in look.models["qwen"].reason


def test_a_replica_ray_lists_as_waiting_for_resources_is_unplaceable_after_the_grace_period():
    def look(waited: float, pending):
        waiting = deployment(replica("STARTING", node=None, started=NOW - waited), required={"CPU": 1})
        resources = ClusterResources(total={"CPU": 2.0}, free={"CPU": 0.25}, pending=pending)
        return application_readiness(ready(Generative_qwen=waiting), QWEN, NOW, resources)

    assert look(PLACEMENT_GRACE_S / 2, [{"CPU": 1.0}]).models["qwen"].state == "starting"
    late = look(PLACEMENT_GRACE_S + 1, [{"CPU": 0.25}, {"CPU": 1.0}]).models["qwen"]
    assert late.state == "unplaceable"
    assert late.reason == (
        'Generative-qwen cannot be placed: each replica needs {"CPU": 1.0}; Ray has it waiting for them '
        '(free in the cluster: {"CPU": 0.25})'
    )


def test_a_replica_whose_worker_starts_slowly_is_starting_not_unplaceable():
    """On a busy machine a worker process can take tens of seconds to start; no demand for it is pending then, and
    Serve's "taken more than 30s to be scheduled" message says nothing about resources."""
    message = "Deployment 'Generative-qwen' ... has 1 replicas that have taken more than 30s to be scheduled. ..."
    slow = deployment(replica("STARTING", node=None, started=NOW - 40), message=message, required={"CPU": 0.25})
    resources = ClusterResources(total={"CPU": 2.0}, free={"CPU": 0.0}, pending=[])
    state = application_readiness(ready(Generative_qwen=slow), QWEN, NOW, resources).models["qwen"]
    assert state.state == "starting"
    assert state.reason == "Generative-qwen is starting: its replica is being scheduled (40s)"


def test_without_the_demands_a_shortage_counts_after_serves_threshold():
    def look(waited: float):
        waiting = deployment(replica("STARTING", node=None, started=NOW - waited), required={"CPU": 1})
        resources = ClusterResources(total={"CPU": 2.0}, free={"CPU": 0.25})
        return application_readiness(ready(Generative_qwen=waiting), QWEN, NOW, resources)

    assert look(PLACEMENT_GRACE_WITHOUT_DEMANDS_S - 1).models["qwen"].state == "starting"
    assert look(PLACEMENT_GRACE_WITHOUT_DEMANDS_S + 1).models["qwen"].state == "unplaceable"


def test_a_constructor_that_raises_is_failing_then_failed_with_its_error():
    retrying = "A replica failed to start with exception. Retrying 2 more time(s). Error:\n" + TRACEBACK
    starting = deployment(replica("STARTING"), message=retrying)
    failing = application_readiness(ready(Encoder_minilm=starting), NEEDS, NOW)
    assert failing.models["minilm"].state == "failing"
    assert failing.models["minilm"].reason.endswith(
        "OSError: /nonexistent/weights does not appear to have a file named config.json"
    )
    gave_up = "The deployment failed to start 3 times in a row. This may be ... Error:\n" + TRACEBACK
    gone = deployment(status="DEPLOY_FAILED", message=gave_up)
    failed = application_readiness(ready(Encoder_minilm=gone), NEEDS, NOW)
    assert failed.models["minilm"].state == "failed" and failed.status == "unavailable"
    assert "Encoder-minilm failed to start: OSError: /nonexistent/weights" in failed.models["minilm"].reason


def test_a_replica_lost_to_a_failed_health_check_is_being_replaced_and_ready_again_once_its_successor_runs():
    lost = ("A replica's health check failed. This deployment will be UNHEALTHY until the replica recovers or a new "
            "deploy happens.")
    replacing = application_readiness(
        app(Ingress=deployment(replica("RUNNING")), Scorer=deployment(replica("STARTING"), status="UNHEALTHY",
                                                                      message=lost)), {"minilm": ("Scorer",)}, NOW)
    assert replacing.models["minilm"].state == "failing"
    assert "Scorer has no running replica: one failed its health check" in replacing.models["minilm"].reason
    assert "keeps failing to start" not in replacing.models["minilm"].reason
    # Serve clears UNHEALTHY a moment after the successor runs; a RUNNING replica serves whatever the status says
    replaced = application_readiness(
        app(Ingress=deployment(replica("RUNNING")), Scorer=deployment(replica("RUNNING"), status="UNHEALTHY",
                                                                      message=lost)), {"minilm": ("Scorer",)}, NOW)
    assert replaced.models["minilm"].state == "ready"


def test_a_deployment_not_created_yet_is_starting():
    look = application_readiness(ready(), {"minilm": ("Encoder-minilm", "Scorer")}, NOW)
    assert look.deployments["Encoder-minilm"].state == "starting" and not look.ready


def test_no_details_at_all_is_starting():
    assert application_readiness(None, {"minilm": ("Scorer",)}, NOW).status == "starting"


def test_startup_error_is_the_last_line_and_bounded():
    assert startup_error("Error:\n" + TRACEBACK).startswith("OSError:")
    assert len(startup_error("Error:\nValueError: " + "x" * 1000)) == 400


def test_a_timeout_names_what_it_waited_for_and_blames_documents_only_when_they_were_the_work():
    waited = "Encoder-minilm, Scorer"
    assert timeout_message(60, waited, None, 1000) == (
        "no answer within 60s from Encoder-minilm, Scorer for 1000 documents; retry, or send fewer documents"
    )
    assert timeout_message(60, waited, None, 1) == "no answer within 60s from Encoder-minilm, Scorer; retry"
    starting = timeout_message(60, waited, "Encoder-minilm is starting: its replica is initializing for 50s", 1000)
    assert "Encoder-minilm is starting" in starting and "fewer documents" not in starting
