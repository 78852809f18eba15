{{/* infleet-gateway: names and labels (its own component, so the operator's selectors never match it). */}}
{{- define "infleet.gateway.fullname" -}}
{{- printf "%s-gateway" (include "infleet.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "infleet.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "infleet.gateway.labels" -}}
helm.sh/chart: {{ include "infleet.chart" . }}
{{ include "infleet.gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: infleet
{{- end -}}

{{- define "infleet.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create -}}
{{- default (include "infleet.gateway.fullname" .) .Values.gateway.serviceAccount.name -}}
{{- else -}}
{{- required "gateway.serviceAccount.name is required when gateway.serviceAccount.create is false" .Values.gateway.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "infleet.gateway.image" -}}
{{- printf "%s:%s" .Values.gateway.image.repository (default .Chart.AppVersion .Values.gateway.image.tag) -}}
{{- end -}}
