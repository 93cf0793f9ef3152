"""The Ray Jobs API client of `humanseg-batch submit` (the run itself is jobs/ray_executor.py; these two
are the only modules that import ray)."""
from __future__ import annotations

import asyncio
import time


def submit_job(address: str, entrypoint: str, runtime_env: dict | None, wait: bool, log=print) -> int:
    """Submit `entrypoint` as a Ray job through the Jobs API; optionally follow its logs to the end."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.time() + 120
    while True:
        try:
            job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env or None)
            break
        except RuntimeError as exc:   # a head that just started has no job agent for a while
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            log("the cluster's job agent is not up yet; retrying")
            time.sleep(2)
    log(f"submitted job {job_id} to {address}")
    log(f"  follow:  ray job logs --address {address} --follow {job_id}")
    log(f"  status:  ray job status --address {address} {job_id}")
    if not wait:
        print(job_id)
        return 0

    async def follow() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(follow())
    except Exception as exc:  # noqa: BLE001 - log streaming is best effort; the status below decides
        log(f"(log stream ended: {exc})")
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        status = client.get_job_status(job_id)
    info = client.get_job_info(job_id)
    log(f"job {job_id}: {status.value}" + (f" ({info.message})" if info.message else ""))
    print(job_id)
    return 0 if status == JobStatus.SUCCEEDED else (info.driver_exit_code or 1)
