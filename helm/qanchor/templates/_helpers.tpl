{{/* Names, labels and shared pod fragments. Every resource template includes these, so a change lands once. */}}

{{- define "qanchor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qanchor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "qanchor.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "qanchor.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Component resource name: <fullname>-<component>, e.g. myrel-qanchor-gateway. Call with (list $ "gateway"). */}}
{{- define "qanchor.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "qanchor.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qanchor.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "qanchor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: qanchor
{{- end -}}

{{/* Selector labels of one component. Call with (list $ "gateway"). */}}
{{- define "qanchor.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "qanchor.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "qanchor.componentLabels" -}}
{{ include "qanchor.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "qanchor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "qanchor.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* ServiceAccount of the Kubernetes job backend (the tuning worker with jobs.kubernetes.enabled). */}}
{{- define "qanchor.jobsServiceAccountName" -}}
{{- default (include "qanchor.componentName" (list . "job-backend")) .Values.jobs.kubernetes.serviceAccountName -}}
{{- end -}}

{{- define "qanchor.secretName" -}}
{{- default (include "qanchor.componentName" (list . "secrets")) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "qanchor.abConfigMapName" -}}
{{- default (include "qanchor.componentName" (list . "ab-config")) .Values.abConfig.existingConfigMap -}}
{{- end -}}

{{- define "qanchor.artifactsClaimName" -}}
{{- default (include "qanchor.componentName" (list . "artifacts")) .Values.artifacts.existingClaim -}}
{{- end -}}

{{/* The event log's PersistentVolumeClaim: its writer (eventlog) and its readers (jobs.kubernetes.mountEventLog). */}}
{{- define "qanchor.eventlogClaimName" -}}
{{- default (include "qanchor.componentName" (list . "eventlog")) .Values.eventlog.storage.existingClaim -}}
{{- end -}}

{{/* Image reference. Call with (list $ .Values.image.services). The tag defaults to the chart's appVersion. */}}
{{- define "qanchor.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Resources with the GPU request folded in. Call with (dict "resources" .Values.x.resources "gpu" .Values.x.gpu).
Extended resources such as nvidia.com/gpu may only be set in limits (the request defaults to the limit).
*/}}
{{- define "qanchor.resources" -}}
{{- $res := deepCopy (.resources | default dict) -}}
{{- if .gpu.enabled -}}
{{- $limits := deepCopy (get $res "limits" | default dict) -}}
{{- $_ := set $limits .gpu.resourceName (int .gpu.count) -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/* Scheduling: a component's own nodeSelector/tolerations/affinity, plus the GPU ones when its GPU is on. */}}
{{- define "qanchor.scheduling" -}}
{{- $nodeSelector := deepCopy (.nodeSelector | default dict) -}}
{{- $tolerations := .tolerations | default list -}}
{{- if and .gpu .gpu.enabled -}}
{{- $nodeSelector = merge $nodeSelector (.gpu.nodeSelector | default dict) -}}
{{- $tolerations = concat $tolerations (.gpu.tolerations | default list) -}}
{{- end -}}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Pod-level fields shared by every workload. */}}
{{- define "qanchor.podCommon" -}}
{{ include "qanchor.podCommonAs" (list . (include "qanchor.serviceAccountName" .)) }}
{{- end -}}

{{/* The same, under another ServiceAccount. Call with (list $ "name"). */}}
{{- define "qanchor.podCommonAs" -}}
{{- $root := index . 0 -}}
serviceAccountName: {{ index . 1 }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- end -}}

{{/* Environment every qanchor process gets (contract: docs/contracts.md). */}}
{{- define "qanchor.commonEnv" -}}
- name: QANCHOR_STATE_DIR
  value: /var/lib/qanchor
- name: QANCHOR_PORT_BASE
  value: "19000"
- name: HF_HUB_OFFLINE
  value: "1"
- name: FEAST_USAGE
  value: "False"
# The root filesystem is read-only; libraries that cache under $HOME write to the /tmp emptyDir instead.
- name: HOME
  value: /tmp
{{- end -}}

{{/* An optional env var from the chart's Secret. Call with (dict "root" $ "name" "GATEWAY_TOKEN" "key" "gateway-token"). */}}
{{- define "qanchor.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "qanchor.secretName" .root }}
      key: {{ .key }}
      optional: true
{{- end -}}

{{/* The feast-apply init container: renders feature_store.yaml (Redis online store) into the pod's feast dir. */}}
{{- define "qanchor.feastInit" -}}
- name: feast-apply
  image: {{ include "qanchor.image" (list . .Values.image.services) }}
  imagePullPolicy: {{ .Values.image.services.pullPolicy }}
  command: ["python", "-m", "services.common.feast_store", "apply", "--state-dir", "/var/lib/qanchor",
            "--online-store", "redis", "--redis-url", "$(QANCHOR_FEAST_REDIS_URL)"]
  env:
    {{- include "qanchor.commonEnv" . | nindent 4 }}
    - name: QANCHOR_FEAST_REDIS_URL
      value: {{ .Values.external.redis.featureStoreUrl | quote }}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml .Values.feast.initResources | nindent 4 }}
  volumeMounts:
    - {name: feast, mountPath: /var/lib/qanchor/feast}
    - {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* The model-export init container (values triton.export): writes the Triton model repository into the pod's
model-repository emptyDir. Triton and the tuning worker both run it, with the same command and the same
read-only artifacts, so the worker tunes against the weights Triton serves (docs/deploy.md: one export source). */}}
{{- define "qanchor.modelExportInit" -}}
{{- $e := .Values.triton.export -}}
- name: model-export
  image: {{ include "qanchor.image" (list . .Values.image.model) }}
  imagePullPolicy: {{ .Values.image.model.pullPolicy }}
  command:
    {{- toYaml $e.command | nindent 4 }}
  {{- with $e.args }}
  args:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  env:
    {{- include "qanchor.commonEnv" . | nindent 4 }}
    # Export runs on the CPU whatever the pod requests: it only writes files.
    - {name: CUDA_VISIBLE_DEVICES, value: ""}
  securityContext:
    {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml $e.resources | nindent 4 }}
  volumeMounts:
    - {name: model-repository, mountPath: /var/lib/qanchor/model_repository}
    - {name: artifacts, mountPath: /var/lib/qanchor/artifacts, readOnly: true}
    - {name: tmp, mountPath: /tmp}
{{- end -}}
