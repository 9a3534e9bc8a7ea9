{{/* Full name of the release's objects. */}}
{{- define "bap-engine.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the orchestrator's pods. */}}
{{- define "bap-engine.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "bap-engine.labels" -}}
{{ include "bap-engine.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "bap-engine.serviceAccountName" -}}
{{- default (include "bap-engine.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Namespace of the engines' Pods and PVCs. */}}
{{- define "bap-engine.engineNamespace" -}}
{{- default .Release.Namespace .Values.engines.namespace -}}
{{- end -}}

{{- define "bap-engine.deploymentId" -}}
{{- default .Release.Name .Values.deploymentId -}}
{{- end -}}
