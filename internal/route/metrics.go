package route

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the gateway's per-service Prometheus metrics.
type Metrics struct {
	Requests *prometheus.CounterVec // service, code
	BytesIn  *prometheus.CounterVec // service
	BytesOut *prometheus.CounterVec // service
	Streams  *prometheus.GaugeVec   // service
	Agents   *prometheus.GaugeVec   // service
}

// NewMetrics creates the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webgw_requests_total", Help: "HTTP requests and passthrough streams served, by service and status code class.",
		}, []string{"service", "code"}),
		BytesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webgw_bytes_in_total", Help: "Bytes sent from clients towards the service's upstreams.",
		}, []string{"service"}),
		BytesOut: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "webgw_bytes_out_total", Help: "Bytes sent from the service's upstreams back to clients.",
		}, []string{"service"}),
		Streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "webgw_open_streams", Help: "Tunnel streams open now.",
		}, []string{"service"}),
		Agents: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "webgw_connected_agents", Help: "Agent sessions attached now.",
		}, []string{"service"}),
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.BytesIn, m.BytesOut, m.Streams, m.Agents)
	}
	return m
}

// ServiceMetrics are one service's metric children, resolved once so the
// request path does no label lookups.
type ServiceMetrics struct {
	// Code counts requests by status class: index 1..5 for 1xx..5xx, 0 for
	// streams without a status (passthrough) and failures before one.
	Code     [6]prometheus.Counter
	BytesIn  prometheus.Counter
	BytesOut prometheus.Counter
	Streams  prometheus.Gauge
	Agents   prometheus.Gauge
}

var codeLabels = [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}

func (m *Metrics) forService(name string) *ServiceMetrics {
	sm := &ServiceMetrics{
		BytesIn:  m.BytesIn.WithLabelValues(name),
		BytesOut: m.BytesOut.WithLabelValues(name),
		Streams:  m.Streams.WithLabelValues(name),
		Agents:   m.Agents.WithLabelValues(name),
	}
	for i, l := range codeLabels {
		sm.Code[i] = m.Requests.WithLabelValues(name, l)
	}
	return sm
}

func (m *Metrics) dropService(name string) {
	m.BytesIn.DeleteLabelValues(name)
	m.BytesOut.DeleteLabelValues(name)
	m.Streams.DeleteLabelValues(name)
	m.Agents.DeleteLabelValues(name)
	for _, l := range codeLabels {
		m.Requests.DeleteLabelValues(name, l)
	}
}

// Count counts one request with HTTP status code (0 for none).
func (sm *ServiceMetrics) Count(code int) {
	i := code / 100
	if i < 0 || i > 5 {
		i = 0
	}
	sm.Code[i].Inc()
}
