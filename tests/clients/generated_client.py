"""Drives the service through a client generated from its own /openapi.json.

tests/api/ops.rs generates the client with openapi-python-client (a mainstream generator) and
runs this script with the generated package on PYTHONPATH. Nothing here is hand-written HTTP:
if the document misdescribes a path, a parameter, a body or a response, the generated code
fails to call or to parse, and the script exits non-zero with the reason.

Environment: APPROVALS_URL, TENANT, AGENT_TOKEN, REVIEWER_TOKEN.
"""

import os
import sys
import threading

from approvals_client import AuthenticatedClient
from approvals_client.api.approvals import accept, get_approval, list_, reject, submit, wait_decision
from approvals_client.models import Action, Approval, DecideBody, Problem, Status, SubmitBody, SubmitResponse


def check(condition, message):
    if not condition:
        sys.exit(f"generated client: {message}")


url, tenant = os.environ["APPROVALS_URL"], os.environ["TENANT"]
agent = AuthenticatedClient(base_url=url, token=os.environ["AGENT_TOKEN"], timeout=70)
reviewer = AuthenticatedClient(base_url=url, token=os.environ["REVIEWER_TOKEN"], timeout=70)

body = SubmitBody(action=Action(type_="document_read"), request_id="generated-1")
body.action["resource"] = "finance/q3-report"
parked = submit.sync(tenant, client=agent, body=body)
check(isinstance(parked, SubmitResponse), f"submit answered {parked!r}")
check(str(parked.decision) == "require_approval", f"decision {parked.decision}")
approval_id = parked.approval.id
again = submit.sync(tenant, client=agent, body=body)
check(isinstance(again, SubmitResponse) and again.approval.id == approval_id, "a repeated request_id parks again")

still = wait_decision.sync(tenant, approval_id, client=agent, wait_seconds=1)
check(isinstance(still, Approval) and str(still.status) == "pending", f"short wait answered {still!r}")

# The agent long-polls while the reviewer decides.
woken = {}
waiter = threading.Thread(
    target=lambda: woken.update(r=wait_decision.sync(tenant, approval_id, client=agent, wait_seconds=30))
)
waiter.start()
listed = list_.sync(tenant, client=reviewer, status=Status.PENDING)
check(any(a.id == approval_id for a in listed.items), "the pending approval is not listed")
decided = accept.sync(tenant, approval_id, client=reviewer, body=DecideBody(reason="generated client"))
check(isinstance(decided, Approval) and str(decided.status) == "accepted", f"accept answered {decided!r}")
waiter.join(40)
check(not waiter.is_alive(), "the long-poll did not return")
check(isinstance(woken.get("r"), Approval) and str(woken["r"].status) == "accepted", f"long-poll answered {woken!r}")

late = reject.sync(tenant, approval_id, client=reviewer, body=DecideBody(reason="too late"))
check(isinstance(late, Problem) and late.code == "already_decided", f"a second decision answered {late!r}")
missing = get_approval.sync(tenant, "0" * 32, client=agent)
check(isinstance(missing, Problem) and missing.status == 404, f"an unknown id answered {missing!r}")

print(f"accepted {approval_id} by {decided.decided_by}")
