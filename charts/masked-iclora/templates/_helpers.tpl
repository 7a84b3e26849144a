{{- define "iclora.name" -}}masked-iclora{{- end -}}
{{- define "iclora.fullname" -}}{{ printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "iclora.labels" -}}
app.kubernetes.io/name: {{ include "iclora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "iclora.selector" -}}
app.kubernetes.io/name: {{ include "iclora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- define "iclora.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}{{- end -}}
{{/* The operator's permissions inside a watched namespace (Role or ClusterRole rules). */}}
{{- define "iclora.namespacedRules" -}}
# Application: the trainings themselves (patch: kopf drops the finalizer older versions added).
- apiGroups: ["iclora.dev"]
  resources: ["maskedicloratrainings"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["iclora.dev"]
  resources: ["maskedicloratrainings/status"]
  verbs: ["get", "patch"]
# Application: the Jobs, Secrets and Services the operator creates name their training as owner
# with blockOwnerDeletion, which OwnerReferencesPermissionEnforcement (on by default on OpenShift)
# allows only to who may update the owner's finalizers.
- apiGroups: ["iclora.dev"]
  resources: ["maskedicloratrainings/finalizers"]
  verbs: ["update"]
# Application: the preflight and training Jobs (patch = suspend/resume; delete = a Job whose
# pod did not start within the profile's podStartTimeoutSeconds).
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Application: exit codes and termination messages of failed pods; why a pod does not start;
# the evicted pods a running Job retried (the profile's maxDisruptions);
# delete: a gang restart deletes the peers of a multi-node training's failed rank.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "delete"]
# Application: headless Service of multi-node trainings.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create"]
# Application: the NetworkPolicy that lets a multi-node training's ranks reach each other.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create"]
# Application: each run's scoped store session (<name>-store, <name>-model-credentials), created and
# renewed (update) before it expires; a tenant's output credentials are read.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update"]
# Framework: Events on the trainings (kopf and our own reasons).
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Application: why the pods of a Job that has none are refused (the Job's FailedCreate Events).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["list"]
{{- if .Values.kueue.enabled }}
# Application: with Kueue, spec.suspend deactivates the training Job's Workload (Kueue owns Job.suspend).
- apiGroups: ["kueue.x-k8s.io"]
  resources: ["workloads"]
  verbs: ["list", "patch"]
{{- end }}
{{- end -}}
