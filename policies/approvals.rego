# Default approval policy for v1 agents, which are read-only: writes are denied, reads of
# sensitive data wait for a human, ordinary reads go through, and anything the policy cannot
# classify waits for a human (fail safe). The service evaluates `data.approvals.decision`.
#
# Input: {tenant, agent_id, submitted_by, action: {type, resource?, classification?, tags?,
#         mutating?, ...}, context}
#
# How an action is classified (first match wins):
#   1. Mutation -> deny. `action.type` is split into words (on any non-alphanumeric character
#      and on camelCase humps, so "file_delete", "delete-file", "Files.Delete" and "deleteFile"
#      all yield the word "delete"); if any word is a known write verb, or the action declares
#      `mutating: true`, the action mutates. Write words win over read words, so
#      "read_and_delete" is a write. `mutating: false` never overrides a write verb: the
#      agent's own label can only make a request stricter, never looser.
#      Words that are as often nouns as verbs ("post", "order", "email", "message", "commit",
#      "archive", "run", ...) are deliberately NOT write verbs, so "order_get" or "email_read"
#      stay reads; a type made only of such words is unknown (rule 3), which still needs a human.
#   2. Read -> allow, unless it touches sensitive data (require_approval). A read is a type
#      with a known read verb and no write verb.
#   3. Anything else (no type, or no known verb at all) -> require_approval: an unknown action
#      might write, and a read-only agent must not be trusted to guess.
#
# Sensitive data (require_approval, one reason per category, naming what matched). A category
# matches when one of its keywords equals (case-insensitively):
#   - a segment of `action.resource` split on '/' and ':' (so "finance/q3.xlsx",
#     "/hr/reviews/2025", "drive:legal/nda.pdf" and "acme/secrets/db" all match, while
#     "docs/finance-news.md" does not: whole folder names, never substrings), or such a
#     segment's name without leading dots and extension ("config/credentials.json",
#     "home/alice/.ssh/id_rsa", "shared/payroll.xlsx"),
#   - a word of `action.type` (e.g. "payroll_read", "secrets_get"),
#   - `action.classification` (a string or a list of strings), or
#   - an entry of `action.tags` (a list of strings).
# Categories: finance, hr, credentials/secrets, personal data (PII/PHI), legal, and a
# "classified" category for the usual confidentiality labels.
# A classification outside the known labels (sensitive or "public"/"internal"/"general")
# also needs a human: an unfamiliar label is more likely to mean "careful" than "open".
# A read that names no resource needs a human too: its sensitivity cannot be judged, and the
# reviewer (and the audit log) should know what was read.
#
# Every decision carries at least one human-readable reason. Reasons are sorted so the same
# input always yields the same list.
#
# Why the code looks the way it does: this runs on every submit, in regorus (its VM, or its
# interpreter where the VM cannot run a bundle), which keeps nothing between evaluations.
# Every rule, builtin call and set/object element is paid for again on each call (in the
# interpreter: a rule ~2 µs, a builtin ~1 µs, a set element ~0.1 µs), so:
#   - the work happens in one rule (`decision`) and two functions, in local variables;
#   - the hot word lists are array literals inside the function that uses them (a denied
#     write never builds the read or sensitive lists), looked up with `in`, a native scan:
#     a set or object of a hundred strings costs more to build than it saves on lookups;
#   - type names made of lower-case letters, digits and "_" "-" "." are split with
#     trim/split; regex (which rebuilds its matcher cache on every call in regorus) is used
#     only for camelCase and unusual characters;
#   - what only a sensitive or odd request needs (category labels, reason texts, the
#     classification vocabulary) is computed only when the cheap checks found something.
# The sensitive keywords are therefore listed twice (a flat list for the lookup, the
# categories for the labels): edit both, and sensitive_keywords_by_label in the tests.
# Time a change (release build, a loop over PolicyGate::evaluate) before "tidying" it;
# approvals_test.rego pins the behaviour.
package approvals

import rego.v1

default decision := {
	"decision": "require_approval",
	"reasons": ["the approvals policy could not classify this request: a human must decide"],
}

# ---------------------------------------------------------------------------------------------
# Step 1: split `action.type` into words, then let `verdict` decide.
#
# Each branch yields the words of lower(regex.replace(type, "([a-z0-9])([A-Z])", "${1}_${2}"))
# split on runs of characters other than [a-z0-9]. The first three skip the regex split for
# types without other separators than "_", "-" and "." (and the first two also skip the
# camelCase regex); they may yield empty words ("a__b"), which match nothing and count as no
# word. `t >= ""` with `t < []` means "t is a string" (Rego orders values by type).

decision := verdict(input.action, t, split(t, "_")) if {
	t := input.action.type
	t >= ""
	t < []
	trim(t, "abcdefghijklmnopqrstuvwxyz0123456789_") == ""
} else := verdict(input.action, t, split(strings.replace_n({"-": "_", ".": "_"}, t), "_")) if {
	t := input.action.type
	t >= ""
	t < []
	trim(t, "abcdefghijklmnopqrstuvwxyz0123456789_.-") == ""
} else := verdict(input.action, t, split(strings.replace_n({"-": "_", ".": "_"}, s), "_")) if {
	t := input.action.type
	t >= ""
	t < []
	s := lower(regex.replace(t, "([a-z0-9])([A-Z])", "${1}_${2}")) # "deleteFile" -> "delete_file"
	trim(s, "abcdefghijklmnopqrstuvwxyz0123456789_.-") == ""
} else := verdict(input.action, t, words) if {
	t := input.action.type
	t >= ""
	t < []
	spaced := lower(regex.replace(t, "([a-z0-9])([A-Z])", "${1}_${2}"))
	words := [w | some w in regex.split("[^a-z0-9]+", spaced); w != ""]
} else := verdict(input.action, null, []) if {
	input.action # present, but without a string type ("null" stands for "no type" below)
} else := verdict(null, null, [])

# ---------------------------------------------------------------------------------------------
# Step 2: deny writes; gather the facts about anything else and let `judge` decide.

verdict(action, t, words) := {"decision": "deny", "reasons": reasons} if {
	write_verbs := [
		# the brief's families: write, update, delete, create, send, execute, transfer, pay, approve
		"write", "overwrite", "save", "put", "patch", "edit", "modify", "update", "upsert",
		"set", "change", "rename", "move", "append", "insert", "replace", "mutate",
		"delete", "remove", "erase", "purge", "destroy", "drop", "truncate", "wipe", "unlink",
		"create", "add", "upload", "import", "provision", "register",
		"send", "forward", "reply", "publish", "notify", "broadcast", "tweet", "sms", "invite", "share",
		"execute", "exec", "invoke", "spawn", "deploy", "install", "uninstall",
		"start", "stop", "restart", "kill", "terminate", "shutdown", "reboot", "reset",
		"rollback", "scale", "push", "restore",
		"mark", "unmark", "clear", "increment", "decrement", "merge", "apply", "flush",
		"transfer", "pay", "payout", "purchase", "buy", "sell", "refund", "charge", "withdraw",
		"deposit", "wire", "trade", "checkout",
		"approve", "reject", "deny", "grant", "revoke", "assign", "unassign", "sign", "submit",
		"cancel", "close", "unlock", "enable", "disable", "suspend", "ban",
		"subscribe", "unsubscribe",
	]
	found := {w | some w in words; w in write_verbs} # a set: sorted, no duplicates
	found != set()
	verb_reason := concat("", [
		"v1 agents are read-only: action type \"", quote(t),
		"\" mutates state (write verb \"", concat("\", \"", found), "\"), so it is denied",
	])
	reasons := array.concat([verb_reason], [mutating_reason | action.mutating == true])
} else := {"decision": "deny", "reasons": [mutating_reason]} if {
	action.mutating == true
} else := judge(t, words, resources, is_read, matches, hits, unrecognised) if {
	read_verbs := [
		"read", "get", "list", "search", "query", "view", "fetch", "describe", "lookup",
		"show", "find", "retrieve", "browse", "inspect", "count", "download", "peek",
		"preview", "summarize", "summarise", "export", "check", "head", "stat", "scan",
		"explain",
	]

	# Every keyword of `sensitive_categories` (below), in one list for the common no-match case.
	# Keep the two in step: a word missing here is never matched (test_every_keyword_is_sensitive
	# checks each one); a word missing there still stops an allow but gets no category reason.
	sensitive_keywords := [
		"finance", "financial", "financials", "accounting", "billing",
		"invoice", "invoices", "payment", "payments", "banking", "bank", "treasury",
		"tax", "taxes", "ledger", "budget", "budgets", "revenue", "expenses",
		"hr", "humanresources", "human_resources", "human-resources", "people",
		"personnel", "employee", "employees", "staff", "payroll", "salary", "salaries",
		"compensation", "recruiting", "hiring", "candidates",
		"credentials", "credential", "creds", "secret", "secrets", "password",
		"passwords", "vault", "keys", "apikey", "apikeys", "api_keys", "api-keys",
		"private_keys", "ssh", "certificates", "certs", "kms",
		"pii", "phi", "personal", "personal_data", "personal-data", "gdpr",
		"customer_data", "customer-data", "contacts", "medical", "patients",
		"ssn",
		"legal", "contracts", "contract", "litigation", "privileged", "nda", "ndas",
		"subpoena", "subpoenas", "counsel",
		"confidential", "restricted", "sensitive", "top_secret", "top-secret",
		"internal_only", "internal-only", "need_to_know", "need-to-know",
	]

	is_read := [w | some w in words; w in read_verbs] != []

	# [the resource] if it is a non-blank string, else []
	resources := [r | r := action.resource; r >= ""; r < []; trim_space(r) != ""]
	segments := [s | some r in resources; some s in split(replace(lower(r), ":", "/"), "/")]


	classifications := {lower(c) | some c in [action.classification]; is_string(c)} | {lower(c) |
		action.classification
		is_array(action.classification)
		some c in action.classification
		is_string(c)
	}
	tags := {lower(g) | action.tags; is_array(action.tags); some g in action.tags; is_string(g)}

	# [keyword, what matched]
	matches := {[s, concat("", ["resource folder \"", s, "\""])] |
		some s in segments
		s in sensitive_keywords
	} |
		named_after(segments, sensitive_keywords) |
		{[w, concat("", ["action type word \"", w, "\""])] | some w in words; w in sensitive_keywords} |
		{[c, concat("", ["classification \"", c, "\""])] | some c in classifications; c in sensitive_keywords} |
		{[g, concat("", ["tag \"", g, "\""])] | some g in tags; g in sensitive_keywords}

	# [category label, what matched], only worked out when something matched
	hits := {[label, e] |
		matches != set()
		sensitive_categories := {
			"finance data": [
				"finance", "financial", "financials", "accounting", "billing",
				"invoice", "invoices", "payment", "payments", "banking", "bank", "treasury",
				"tax", "taxes", "ledger", "budget", "budgets", "revenue", "expenses",
			],
			"HR data": [
				"hr", "humanresources", "human_resources", "human-resources", "people",
				"personnel", "employee", "employees", "staff", "payroll", "salary", "salaries",
				"compensation", "recruiting", "hiring", "candidates",
			],
			"credentials or secrets": [
				"credentials", "credential", "creds", "secret", "secrets", "password",
				"passwords", "vault", "keys", "apikey", "apikeys", "api_keys", "api-keys",
				"private_keys", "ssh", "certificates", "certs", "kms",
			],
			"personal data (PII)": [
				"pii", "phi", "personal", "personal_data", "personal-data", "gdpr",
				"customer_data", "customer-data", "contacts", "medical", "patients",
				"ssn",
			],
			"legal material": [
				"legal", "contracts", "contract", "litigation", "privileged", "nda", "ndas",
				"subpoena", "subpoenas", "counsel",
			],
			"classified data": [
				"confidential", "restricted", "sensitive", "top_secret", "top-secret",
				"internal_only", "internal-only", "need_to_know", "need-to-know",
			],
		}
		some [k, e] in matches
		some label, keywords in sensitive_categories
		k in keywords
	}

	unrecognised := {c |
		some c in classifications
		not c in ordinary_classifications
		not c in sensitive_keywords
	}
}

# [keyword, what matched] for each file or dot-folder named after a keyword ("credentials.json",
# ".ssh", "payroll.xlsx"): its name without leading dots and extension. A function of its own:
# `verdict` is at the VM's limit of 255 registers.
named_after(segments, keywords) := {[n, concat("", ["resource name \"", s, "\""])] |
	some s in segments
	contains(s, ".")
	parts := split(trim_left(s, "."), ".")
	n := parts[0]
	n in keywords
}

# Non-sensitive classification labels; any other label needs a human.
ordinary_classifications := ["public", "internal", "general", "unclassified", "open"]

mutating_reason := "v1 agents are read-only: the action declares \"mutating\": true, so it is denied"

# What a reason quotes of the agent's input, cut to 64 characters: a reason explains, it does
# not store the input again (the record already holds it).
quote(s) := s if {
	count(s) <= 64
} else := concat("", [substring(s, 0, 64), "…"])

# ---------------------------------------------------------------------------------------------
# Step 3: allow a plain read; otherwise explain what needs a human.

judge(t, words, resources, is_read, matches, hits, unrecognised) := {
	"decision": "allow",
	"reasons": [concat("", [
		"read-only action \"", quote(t), "\" on \"", quote(resources[0]), "\" touches no sensitive data",
	])],
} if {
	is_read
	resources != []
	matches == set()
	unrecognised == set()
} else := {"decision": "require_approval", "reasons": sort(reasons)} if {
	reasons := {concat("", ["access to ", label, " needs a human reviewer (", concat(", ", evidence), ")"]) |
		some [label, _] in hits
		evidence := {e | some [l, e] in hits; l == label} # a set: sorted, no duplicates
	} | {concat("", ["unrecognised classification \"", quote(c), "\": a human reviewer must judge it"]) |
		some c in unrecognised
	} | {"the action has no string \"type\", so it cannot be classified: a human reviewer must decide" |
		t == null
	} | {concat("", [
		"action type \"", quote(t),
		"\" contains no words, so it cannot be classified: a human reviewer must decide",
	]) |
		t != null
		every w in words {
			w == ""
		}
	} | {concat("", [
		"unknown action type \"", quote(t),
		"\" (neither a known read nor a known write): a human reviewer must decide",
	]) |
		not is_read
		some w in words
		w != ""
	} | {concat("", [
		"read action \"", quote(t),
		"\" names no resource, so its sensitivity cannot be judged: a human reviewer must decide",
	]) |
		is_read
		resources == []
	}
	reasons != set()
} else := {
	# not reached in practice (something above always explains a non-allow); the fail-safe
	# default, as for the default decision
	"decision": "require_approval",
	"reasons": ["the approvals policy could not classify this request: a human must decide"],
}
