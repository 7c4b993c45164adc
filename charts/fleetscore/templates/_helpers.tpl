{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "fleetscore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "fleetscore.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "fleetscore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object the chart owns (the test lists leftovers by these). */}}
{{- define "fleetscore.labels" -}}
helm.sh/chart: {{ include "fleetscore.chart" . }}
{{ include "fleetscore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fleetscore
{{- end }}

{{- define "fleetscore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fleetscore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fleetscore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fleetscore.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleetscore.scorerServiceAccountName" -}}
{{- if .Values.scorer.serviceAccount.create }}
{{- default (printf "%s-scorer" (include "fleetscore.fullname" .) | trunc 63 | trimSuffix "-") .Values.scorer.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.scorer.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fleetscore.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "fleetscore.scorerImage" -}}
{{- printf "%s:%s" .Values.scorer.image.repository (default .Chart.AppVersion .Values.scorer.image.tag) }}
{{- end }}

{{/* Whether RBAC is namespaced (a Role in watchNamespace) or cluster-wide. */}}
{{- define "fleetscore.rbacKind" -}}
{{- if .Values.operator.watchNamespace }}Role{{ else }}ClusterRole{{ end }}
{{- end }}
