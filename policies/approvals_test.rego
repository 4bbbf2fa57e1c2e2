# Tests of the default approvals bundle, runnable with `opa test policies/` and by the
# service's own `cargo test -p approvals --test policy_bundle` (regorus). Each test states
# the decision and checks that a reason explains it, since reasons are part of the contract.
package approvals_test

import data.approvals
import rego.v1

# helpers ---------------------------------------------------------------------------------

req(action) := {
	"tenant": "acme",
	"agent_id": "retrieval-agent-v1",
	"submitted_by": "agent-token-subject",
	"action": action,
	"context": {"on_behalf_of": "project_alpha"},
}

decide(action) := d if {
	d := approvals.decision with input as req(action)
}

# true when some reason contains `text`
has_reason(d, text) if {
	some r in d.reasons
	contains(r, text)
}

well_formed(d) if {
	d.decision in {"allow", "deny", "require_approval"}
	count(d.reasons) > 0
	every r in d.reasons {
		is_string(r)
		r != ""
	}
}

# allow -----------------------------------------------------------------------------------

test_ordinary_read_is_allowed if {
	d := decide({"type": "document_read", "resource": "docs/handbook/onboarding.md"})
	d.decision == "allow"
	well_formed(d)
	has_reason(d, "no sensitive data")
}

test_read_verbs_in_any_spelling_are_allowed if {
	every t in ["search", "wiki.search", "list-pages", "getPage", "Files.Get", "READ"] {
		d := decide({"type": t, "resource": "wiki/engineering"})
		d.decision == "allow"
	}
}

test_public_classification_is_allowed if {
	d := decide({"type": "report_get", "resource": "reports/weekly", "classification": "public"})
	d.decision == "allow"
}

test_ambiguous_noun_stays_a_read if {
	# "order" and "email" are nouns here, not write verbs
	decide({"type": "order_get", "resource": "shop/orders/42"}).decision == "allow"
	decide({"type": "email_read", "resource": "inbox/msg-1"}).decision == "allow"
}

test_sensitive_words_must_be_whole_folders if {
	d := decide({"type": "document_read", "resource": "news/finance-weekly.md"})
	d.decision == "allow"
}

# sensitive reads -------------------------------------------------------------------------

test_finance_read_requires_approval if {
	d := decide({"type": "document_read", "resource": "finance/q3-forecast.xlsx"})
	d.decision == "require_approval"
	well_formed(d)
	has_reason(d, "finance data")
	has_reason(d, "resource folder \"finance\"")
}

test_finance_by_classification_tag_or_type if {
	decide({"type": "document_read", "resource": "doc_xyz789", "classification": "financial"}).decision == "require_approval"
	decide({"type": "document_read", "resource": "doc_xyz789", "tags": ["Invoices"]}).decision == "require_approval"
	d := decide({"type": "payroll_read", "resource": "doc_xyz789"})
	d.decision == "require_approval"
	has_reason(d, "HR data")
}

test_sensitive_file_names_and_dot_folders_require_approval if {
	every resource in [
		"home/alice/.ssh/id_rsa", "config/credentials.json", "deploy/secrets.yaml",
		"shared/payroll.xlsx", "hr-docs/salaries.csv",
	] {
		decide({"type": "file_read", "resource": resource}).decision == "require_approval"
	}
	d := decide({"type": "file_read", "resource": "config/credentials.json"})
	has_reason(d, "resource name \"credentials.json\"")
}

test_hr_read_requires_approval if {
	d := decide({"type": "file_get", "resource": "/HR/reviews/2025/alice.pdf"})
	d.decision == "require_approval"
	has_reason(d, "HR data")
}

test_credentials_read_requires_approval if {
	d := decide({"type": "secret_get", "resource": "vault:prod/db-password"})
	d.decision == "require_approval"
	has_reason(d, "credentials or secrets")
	has_reason(d, "action type word \"secret\"")
	has_reason(d, "resource folder \"vault\"")
}

test_personal_data_read_requires_approval if {
	d := decide({"type": "record_lookup", "resource": "crm/customers/123", "classification": "PII"})
	d.decision == "require_approval"
	has_reason(d, "personal data (PII)")
	has_reason(d, "classification \"pii\"")
}

test_legal_read_requires_approval if {
	d := decide({"type": "document_read", "resource": "drive:legal/nda-acme.pdf"})
	d.decision == "require_approval"
	has_reason(d, "legal material")
}

test_classified_label_requires_approval if {
	d := decide({"type": "document_read", "resource": "doc_1", "classification": ["internal", "Confidential"]})
	d.decision == "require_approval"
	has_reason(d, "classified data")
}

test_several_categories_give_one_reason_each if {
	d := decide({"type": "document_read", "resource": "legal/hr/dispute.pdf", "tags": ["pii"]})
	d.decision == "require_approval"
	count(d.reasons) == 3
	has_reason(d, "legal material")
	has_reason(d, "HR data")
	has_reason(d, "personal data (PII)")
}

test_unknown_classification_requires_approval if {
	d := decide({"type": "document_read", "resource": "doc_1", "classification": "eyes-only"})
	d.decision == "require_approval"
	has_reason(d, "unrecognised classification \"eyes-only\"")
}

# denials ---------------------------------------------------------------------------------

test_delete_is_denied if {
	d := decide({"type": "file_delete", "resource": "docs/old.md"})
	d.decision == "deny"
	well_formed(d)
	has_reason(d, "read-only")
	has_reason(d, "\"delete\"")
}

test_write_family_is_denied if {
	every t in ["document_write", "record_update", "page_create", "Files.Upload", "upsert_row"] {
		d := decide({"type": t, "resource": "docs/x"})
		d.decision == "deny"
		has_reason(d, "read-only")
	}
}

test_send_is_denied if {
	d := decide({"type": "sendEmail", "resource": "mail/outbox", "to": "ceo@example.com"})
	d.decision == "deny"
	has_reason(d, "\"send\"")
}

test_execute_is_denied if {
	every t in ["shell_execute", "exec", "invoke_lambda", "deploy-service"] {
		decide({"type": t, "resource": "prod/cluster"}).decision == "deny"
	}
}

test_money_movement_is_denied if {
	every t in ["funds_transfer", "invoice_pay", "refund_issue"] {
		d := decide({"type": t, "resource": "finance/accounts/1"})

		# a write of sensitive data is denied, not merely held for approval
		d.decision == "deny"
		has_reason(d, "read-only")
	}
}

test_approve_is_denied if {
	d := decide({"type": "expense_approve", "resource": "expenses/77"})
	d.decision == "deny"
	has_reason(d, "\"approve\"")
}

test_declared_mutating_is_denied if {
	d := decide({"type": "document_read", "resource": "docs/a.md", "mutating": true})
	d.decision == "deny"
	has_reason(d, "\"mutating\": true")
}

test_mutating_false_cannot_launder_a_write if {
	decide({"type": "file_delete", "resource": "docs/a.md", "mutating": false}).decision == "deny"
}

test_writes_named_with_read_words_are_denied if {
	every t in ["mark_as_read", "markAsRead", "clear_search_history", "incrementViewCount"] {
		decide({"type": t, "resource": "inbox/msg-1"}).decision == "deny"
	}
}

test_write_wins_over_read if {
	d := decide({"type": "read_and_delete", "resource": "docs/a.md"})
	d.decision == "deny"
	count(d.reasons) == 1
}

# fail safe -------------------------------------------------------------------------------

test_unknown_type_requires_approval if {
	d := decide({"type": "frobnicate_widget", "resource": "docs/a.md"})
	d.decision == "require_approval"
	well_formed(d)
	has_reason(d, "unknown action type \"frobnicate_widget\"")
}

test_noun_only_type_requires_approval if {
	decide({"type": "email", "resource": "mail/outbox"}).decision == "require_approval"
}

test_missing_resource_requires_approval if {
	d := decide({"type": "document_read"})
	d.decision == "require_approval"
	has_reason(d, "names no resource")
}

test_blank_or_non_string_resource_requires_approval if {
	decide({"type": "document_read", "resource": "  "}).decision == "require_approval"
	decide({"type": "document_read", "resource": 42}).decision == "require_approval"
}

test_missing_or_odd_type_requires_approval if {
	d := decide({"resource": "docs/a.md"})
	d.decision == "require_approval"
	has_reason(d, "no string \"type\"")
	decide({"type": 7, "resource": "docs/a.md"}).decision == "require_approval"
	decide({"type": "__", "resource": "docs/a.md"}).decision == "require_approval"
}

test_missing_action_requires_approval if {
	d := approvals.decision with input as {"tenant": "acme"}
	d.decision == "require_approval"
	well_formed(d)
}

# how action.type is split -----------------------------------------------------------------
# (the policy takes shortcuts for common spellings; all of them must split alike)

test_type_spellings_split_alike if {
	every t in [
		"file_delete", "file-delete", "file.delete", "FileDelete", "fileDelete", "FILE_DELETE",
		"file delete", "file/delete", "file:delete", "file__delete", "_delete_", "Files.Delete",
	] {
		d := decide({"type": t, "resource": "docs/x"})
		d.decision == "deny"
		has_reason(d, "(write verb \"delete\")")
	}
	every t in ["get_page", "get-page", "get.page", "getPage", "GetPage", "GET_PAGE", "get page", "get:page", "__get", "get--"] {
		decide({"type": t, "resource": "docs/x"}).decision == "allow"
	}
}

test_camel_case_splits_only_after_lower_case_or_digit if {
	# "HTTPGet" is one word ("httpget"), so the type is unknown; "http2Get" splits after the digit
	decide({"type": "HTTPGet", "resource": "docs/x"}).decision == "require_approval"
	decide({"type": "http2Get", "resource": "docs/x"}).decision == "allow"
}

test_type_of_separators_only_has_no_words if {
	every t in ["__", "-", ".", "_._", " "] {
		d := decide({"type": t, "resource": "docs/a.md"})
		d.decision == "require_approval"
		has_reason(d, "contains no words")
	}
}

test_write_verbs_are_named_once_and_sorted if {
	d := decide({"type": "update_or_delete_delete", "resource": "docs/a.md"})
	d.decision == "deny"
	has_reason(d, "(write verb \"delete\", \"update\")")
}

test_write_verb_and_declared_mutating_give_both_reasons if {
	d := decide({"type": "file_delete", "resource": "docs/a.md", "mutating": true})
	d.decision == "deny"
	count(d.reasons) == 2
	contains(d.reasons[0], "(write verb \"delete\")")
	contains(d.reasons[1], "\"mutating\": true")
}

# sensitive data: the exact vocabulary ------------------------------------------------------

# Every keyword of every category, as the policy must match it (as a resource folder, in any
# case, and as a tag). The policy keeps these words in two lists; this pins both.
sensitive_keywords_by_label := {
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

test_every_keyword_is_sensitive if {
	every label, keywords in sensitive_keywords_by_label {
		every k in keywords {
			by_folder := decide({"type": "document_read", "resource": concat("/", ["drive", upper(k), "x.txt"])})
			by_folder.decision == "require_approval"
			by_folder.reasons == [concat("", ["access to ", label, " needs a human reviewer (resource folder \"", k, "\")"])]
			by_tag := decide({"type": "document_read", "resource": "docs/x", "tags": [k]})
			by_tag.reasons == [concat("", ["access to ", label, " needs a human reviewer (tag \"", k, "\")"])]
		}
	}
}

test_sensitive_evidence_is_sorted_and_deduplicated if {
	d := decide({
		"type": "secrets_get",
		"resource": "vault/Secrets:secrets",
		"tags": ["SECRETS", "secrets"],
		"classification": "Secrets",
	})
	d.reasons == ["access to credentials or secrets needs a human reviewer (action type word \"secrets\", classification \"secrets\", resource folder \"secrets\", resource folder \"vault\", tag \"secrets\")"]
}

test_reasons_are_sorted if {
	d := decide({"type": "payroll_frobnicate", "resource": "legal/x", "classification": ["zz-label", "aa-label"]})
	d.decision == "require_approval"
	count(d.reasons) == 5
	d.reasons == sort(d.reasons)
}

test_unknown_classification_is_named_once if {
	d := decide({"type": "document_read", "resource": "doc_1", "classification": ["Eyes-Only", "eyes-only"]})
	d.reasons == ["unrecognised classification \"eyes-only\": a human reviewer must judge it"]
}

test_only_string_tags_and_classifications_count if {
	decide({"type": "document_read", "resource": "docs/x", "tags": "pii"}).decision == "allow"
	decide({"type": "document_read", "resource": "docs/x", "tags": {"a": "pii"}}).decision == "allow"
	decide({"type": "document_read", "resource": "docs/x", "tags": [1, null, "misc"]}).decision == "allow"
	decide({"type": "document_read", "resource": "docs/x", "classification": {"a": "pii"}}).decision == "allow"
	decide({"type": "document_read", "resource": "docs/x", "classification": [3, "PUBLIC"]}).decision == "allow"
}

test_sensitive_unknown_action_gives_both_reasons if {
	d := decide({"type": "frobnicate", "resource": "hr/x"})
	d.decision == "require_approval"
	count(d.reasons) == 2
	has_reason(d, "HR data")
	has_reason(d, "unknown action type \"frobnicate\"")
}

test_resource_segments_may_be_blank_or_odd if {
	decide({"type": "document_read", "resource": "//finance::x"}).decision == "require_approval"
	decide({"type": "document_read", "resource": " finance /x"}).decision == "allow"
	decide({"type": "document_read", "resource": "\t"}).decision == "require_approval"
}

# reasons quote at most 64 characters of the input ---------------------------------------------

test_long_inputs_are_quoted_cut_short if {
	long := concat("", [concat("", ["zq" | some _ in numbers.range(1, 200)]), "_read"])
	d := decide({"type": long, "resource": "docs/handbook.md"})
	well_formed(d)
	every r in d.reasons {
		count(r) < 250
	}
	some r in d.reasons
	contains(r, "…")
}
