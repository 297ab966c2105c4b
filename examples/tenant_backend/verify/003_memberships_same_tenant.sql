-- A team membership never joins a user and a team of different tenants.
SELECT m.id FROM core_teammembership m
JOIN core_team t ON t.id = m.team_id JOIN core_user u ON u.id = m.user_id
WHERE t.tenant_id <> m.tenant_id OR u.tenant_id <> m.tenant_id;
