-- Every task belongs to a project of the same tenant.
SELECT t.id FROM core_task t JOIN core_project p ON p.id = t.project_id WHERE p.tenant_id <> t.tenant_id;
