{{/*
How values reach the operator: its command line and environment. Keep in line with
`fleetscore operator --help` (operator/src/main.rs); README.md ("Configuration reference") lists both.
*/}}
{{- define "fleetscore.operatorArgs" -}}
- operator
- --metrics-addr=0.0.0.0:{{ .Values.operator.port }}
- --log-format={{ .Values.operator.logFormat }}
{{- with .Values.operator.watchNamespace }}
- --namespace={{ . }}
{{- end }}
- --finished-job-ttl={{ .Values.operator.finishedJobTtlSeconds }}
{{- if not .Values.operator.ledger }}
- --no-ledger
{{- end }}
{{- if not .Values.operator.schedules }}
- --no-schedules
{{- end }}
{{- if .Values.operator.leaderElection.enabled }}
- --leader-elect
- --lease-name={{ include "fleetscore.fullname" . }}
- --lease-duration-seconds={{ .Values.operator.leaderElection.leaseDurationSeconds }}
- --lease-grace-seconds={{ .Values.operator.leaderElection.renewGraceSeconds }}
{{- end }}
{{- if and (eq .Values.scaler.mode "kwok") .Values.scaler.kwok.nodeTaint }}
- --kwok-node-taint={{ .Values.scaler.kwok.nodeTaint }}
{{- end }}
{{- range .Values.operator.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "fleetscore.operatorEnv" -}}
- name: RUST_LOG
  value: {{ .Values.operator.logLevel | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- with .Values.operator.storageAccountName }}
- name: AZURE_STORAGE_ACCOUNT_NAME
  value: {{ . | quote }}
{{- end }}
- name: FLEETSCORE_SCORER_IMAGE
  value: {{ include "fleetscore.scorerImage" . | quote }}
{{- if .Values.scorer.defaultServiceAccount }}
- name: FLEETSCORE_SCORER_SERVICE_ACCOUNT
  value: {{ include "fleetscore.scorerServiceAccountName" . | quote }}
{{- end }}
{{- with .Values.scorer.storageSecret }}
- name: FLEETSCORE_SCORER_SECRET
  value: {{ . | quote }}
{{- end }}
{{- with .Values.scorer.nodeSelector }}
- name: FLEETSCORE_SCORER_NODE_SELECTOR
  value: {{ toJson . | quote }}
{{- end }}
{{- with .Values.scorer.tolerations }}
- name: FLEETSCORE_SCORER_TOLERATIONS
  value: {{ toJson . | quote }}
{{- end }}
- name: FLEETSCORE_SCALER_MODE
  value: {{ .Values.scaler.mode | quote }}
- name: FLEETSCORE_SCALER_POOL
  value: {{ .Values.scaler.pool | quote }}
- name: FLEETSCORE_SCALER_MIN_NODES
  value: {{ .Values.scaler.min | quote }}
- name: FLEETSCORE_SCALER_MAX_NODES
  value: {{ .Values.scaler.max | quote }}
- name: FLEETSCORE_SCALER_JOBS_PER_NODE
  value: {{ .Values.scaler.jobsPerNode | quote }}
- name: FLEETSCORE_SCALER_SCALE_DOWN_DELAY
  value: {{ .Values.scaler.scaleDownDelay | quote }}
{{- with .Values.scaler.prewarm }}
- name: FLEETSCORE_SCALER_PREWARM_LEAD
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.scaler.mode "aks" }}
- name: AZURE_SUBSCRIPTION_ID
  value: {{ required "scaler.subscription is required when scaler.mode=aks" .Values.scaler.subscription | quote }}
- name: FLEETSCORE_AKS_RESOURCE_GROUP
  value: {{ required "scaler.resourceGroup is required when scaler.mode=aks" .Values.scaler.resourceGroup | quote }}
- name: FLEETSCORE_AKS_CLUSTER
  value: {{ required "scaler.cluster is required when scaler.mode=aks" .Values.scaler.cluster | quote }}
- name: FLEETSCORE_ARM_ENDPOINT
  value: {{ .Values.scaler.armEndpoint | quote }}
{{- end }}
{{- end }}
