{{/* The five services, in the order the architecture names them. */}}
{{- define "flywheel.serviceNames" -}}
gateway router registry trainer monitor
{{- end -}}

{{/* <release>-flywheel, or the release name alone when it already says flywheel. */}}
{{- define "flywheel.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The name of one service's objects: <fullname>-<service>. Takes (dict "root" $ "name" NAME). */}}
{{- define "flywheel.componentName" -}}
{{- printf "%s-%s" (include "flywheel.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object, less those a selector uses. */}}
{{- define "flywheel.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flywheel
{{- end -}}

{{- define "flywheel.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "flywheel.commonLabels" . }}
{{- end -}}

{{/* Selector of one service's pods. Takes (dict "root" $ "name" NAME). */}}
{{- define "flywheel.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "flywheel.configName" -}}
{{- printf "%s-config" (include "flywheel.fullname" .) -}}
{{- end -}}

{{- define "flywheel.dataClaim" -}}
{{- .Values.data.existingClaim | default (printf "%s-data" (include "flywheel.fullname" .)) -}}
{{- end -}}

{{/* repository:tag of a service's image: its own `image` values over the chart's. */}}
{{- define "flywheel.image" -}}
{{- $own := .svc.image | default dict -}}
{{- $repository := $own.repository | default .root.Values.image.repository -}}
{{- $tag := $own.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
