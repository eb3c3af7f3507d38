-- Sample rows for the two demo tenants, inserted by superuser postgres (which
-- bypasses RLS, so tenant_id is given explicitly). Runs after schema.sql, in
-- database app, with psql variables tenant_a and tenant_b set.

INSERT INTO tenant_config (tenant_id, key, value) VALUES
    (:'tenant_a', 'display_name', 'Acme Corp'),
    (:'tenant_a', 'plan', 'pro'),
    (:'tenant_a', 'max_tool_calls_per_day', '10000'),
    (:'tenant_b', 'display_name', 'Globex'),
    (:'tenant_b', 'plan', 'free'),
    (:'tenant_b', 'max_tool_calls_per_day', '100');

INSERT INTO tool_calls (tenant_id, tool_name, success, payload) VALUES
    (:'tenant_a', 'search_docs', true, '{"query": "refund policy"}'),
    (:'tenant_a', 'create_ticket', true, '{"title": "Printer on fire", "priority": "high"}'),
    (:'tenant_a', 'send_email', false, '{"to": "ops@acme.example", "error": "mailbox full"}'),
    (:'tenant_b', 'search_docs', true, '{"query": "pricing tiers"}'),
    (:'tenant_b', 'summarize', true, '{"document": "Q3 report"}');

INSERT INTO tool_events (tenant_id, call_id, kind)
SELECT tenant_id, id, 'completed' FROM tool_calls WHERE success
UNION ALL
SELECT tenant_id, id, 'failed' FROM tool_calls WHERE NOT success;
