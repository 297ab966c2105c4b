"""The data model of a multi-tenant SaaS backend: one global Tenant, every other table tenant-scoped."""

import uuid

from django.db import models


class Tenant(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)


class TenantScoped(models.Model):
    """Every row belongs to one tenant; the column is `tenant_id`, which RLS policies compare."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE)

    class Meta:
        abstract = True


def unique_per_tenant(*fields: str) -> models.UniqueConstraint:
    model_fields = ("tenant", *fields)
    return models.UniqueConstraint(fields=model_fields, name="%(class)s_uniq_" + "_".join(fields))


class User(TenantScoped):
    email = models.EmailField()
    full_name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [unique_per_tenant("email")]


class Team(TenantScoped):
    name = models.CharField(max_length=120)

    class Meta:
        constraints = [unique_per_tenant("name")]


class TeamMembership(TenantScoped):
    team = models.ForeignKey(Team, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)

    class Meta:
        constraints = [unique_per_tenant("team", "user")]


class Role(TenantScoped):
    name = models.CharField(max_length=80)
    permissions = models.JSONField(default=list)

    class Meta:
        constraints = [unique_per_tenant("name")]


class UserRole(TenantScoped):
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    role = models.ForeignKey(Role, on_delete=models.CASCADE)

    class Meta:
        constraints = [unique_per_tenant("user", "role")]


class Session(TenantScoped):
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    token_hash = models.CharField(max_length=128)
    expires_at = models.DateTimeField(null=True)

    class Meta:
        constraints = [unique_per_tenant("token_hash")]


class ApiKey(TenantScoped):
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    prefix = models.CharField(max_length=16)
    key_hash = models.CharField(max_length=128)

    class Meta:
        constraints = [unique_per_tenant("prefix")]


class Project(TenantScoped):
    key = models.CharField(max_length=16)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    slug = models.SlugField(max_length=80, null=True)

    class Meta:
        constraints = [unique_per_tenant("key")]


class ProjectMember(TenantScoped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)

    class Meta:
        constraints = [unique_per_tenant("project", "user")]


class Repository(TenantScoped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    name = models.CharField(max_length=200)
    clone_url = models.URLField()

    class Meta:
        constraints = [unique_per_tenant("name")]


class Milestone(TenantScoped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    title = models.CharField(max_length=200)
    due_on = models.DateField(null=True)


class TaskStatus(TenantScoped):
    name = models.CharField(max_length=40)
    position = models.IntegerField(default=0)
    is_default = models.BooleanField(default=False)

    class Meta:
        constraints = [unique_per_tenant("name")]


class Task(TenantScoped):
    project = models.ForeignKey(Project, on_delete=models.CASCADE)
    status = models.ForeignKey(TaskStatus, on_delete=models.PROTECT)
    milestone = models.ForeignKey(Milestone, on_delete=models.SET_NULL, null=True)
    title = models.CharField(max_length=300)
    body = models.TextField(blank=True)
    priority = models.IntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"], name="task_tenant_created_idx")]


class TaskAssignment(TenantScoped):
    task = models.ForeignKey(Task, on_delete=models.CASCADE)
    user = models.ForeignKey(User, on_delete=models.CASCADE)

    class Meta:
        constraints = [unique_per_tenant("task", "user")]


class TaskComment(TenantScoped):
    task = models.ForeignKey(Task, on_delete=models.CASCADE)
    author = models.ForeignKey(User, on_delete=models.CASCADE)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)


class Label(TenantScoped):
    name = models.CharField(max_length=60)
    color = models.CharField(max_length=7, default="#888888")

    class Meta:
        constraints = [unique_per_tenant("name")]


class TaskLabel(TenantScoped):
    task = models.ForeignKey(Task, on_delete=models.CASCADE)
    label = models.ForeignKey(Label, on_delete=models.CASCADE)

    class Meta:
        constraints = [unique_per_tenant("task", "label")]


class Attachment(TenantScoped):
    task = models.ForeignKey(Task, on_delete=models.CASCADE)
    file_name = models.CharField(max_length=255)
    size_bytes = models.BigIntegerField(default=0)


class Webhook(TenantScoped):
    url = models.URLField()
    secret_hash = models.CharField(max_length=128)
    is_active = models.BooleanField(default=True)


class WebhookDelivery(TenantScoped):
    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE)
    status_code = models.IntegerField(default=200)
    delivered_at = models.DateTimeField(auto_now_add=True)


class AuditLog(TenantScoped):
    actor = models.ForeignKey(User, on_delete=models.SET_NULL, null=True)
    action = models.CharField(max_length=80)
    payload = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)


class Subscription(TenantScoped):
    plan = models.CharField(max_length=40)
    seats = models.IntegerField(default=1)

    class Meta:
        constraints = [unique_per_tenant("plan")]


class Invoice(TenantScoped):
    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE)
    number = models.CharField(max_length=40)
    amount_cents = models.BigIntegerField(default=0)
    issued_on = models.DateField(null=True)

    class Meta:
        constraints = [unique_per_tenant("number")]


class InvoiceLine(TenantScoped):
    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE)
    description = models.CharField(max_length=200)
    amount_cents = models.BigIntegerField(default=0)


class Notification(TenantScoped):
    user = models.ForeignKey(User, on_delete=models.CASCADE)
    message = models.CharField(max_length=300)
    read = models.BooleanField(default=False)


class Integration(TenantScoped):
    kind = models.CharField(max_length=40)
    config = models.JSONField(default=dict)

    class Meta:
        constraints = [unique_per_tenant("kind")]


class FeatureFlag(TenantScoped):
    key = models.CharField(max_length=80)
    enabled = models.BooleanField(default=False)

    class Meta:
        constraints = [unique_per_tenant("key")]
