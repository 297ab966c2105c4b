-- Every tenant has the default task statuses (created by the release's data migration).
SELECT tn.id FROM core_tenant tn
WHERE (SELECT count(*) FROM core_taskstatus s WHERE s.tenant_id = tn.id AND s.is_default) < 3;
