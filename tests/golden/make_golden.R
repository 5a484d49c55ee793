# Golden reference values from R's survival (and cmprsk) packages.
#
# Reads tests/golden/data/{lung,gbsg2,rossi,waltons}.csv (written by
# export_data.py), writes tests/golden/data/mgus2.csv from survival::mgus2 and
# writes tests/golden/golden.json.  Run via tests/golden/regenerate.sh.
#
# JSON conventions (Python code relies on these):
#   * every per-time / per-coefficient vector is ALWAYS a JSON array, even when
#     it has length 1; single summary numbers are JSON scalars;
#   * NA, NaN and +/-Inf are written as null;
#   * doubles are written with the shortest decimal representation that
#     round-trips to the same IEEE double (up to 17 significant digits).
#     jsonlite's own `digits = NA` stops at 15 significant digits, which is
#     not full precision, so numbers are pre-formatted here and inserted with
#     `json_verbatim = TRUE`.

suppressPackageStartupMessages({
  library(survival)
  library(cmprsk)
  library(jsonlite)
})

script_dir <- local({
  arg <- grep("^--file=", commandArgs(trailingOnly = FALSE), value = TRUE)
  if (length(arg) == 1) dirname(normalizePath(sub("^--file=", "", arg))) else getwd()
})
data_dir <- file.path(script_dir, "data")
out_path <- file.path(script_dir, "golden.json")

# ---------------------------------------------------------------------------
# number formatting helpers
# ---------------------------------------------------------------------------

# GOLDEN_DIGITS=17 forces "%.17g" everywhere (used only to cross-check the
# shortest-representation logic; the committed file uses the default).
force17 <- identical(Sys.getenv("GOLDEN_DIGITS"), "17")

fmt_num <- function(x) {
  x <- as.double(x)
  out <- rep("null", length(x))
  ok <- is.finite(x)
  if (!any(ok)) return(out)
  v <- x[ok]
  if (force17) {
    s <- sprintf("%.17g", v)
  } else {
    s <- sprintf("%.15g", v)
    for (d in c(16, 17)) {
      bad <- as.numeric(s) != v
      if (!any(bad)) break
      s[bad] <- sprintf(paste0("%.", d, "g"), v[bad])
    }
  }
  out[ok] <- s
  out
}

# JSON array of numbers (always an array, whatever the length)
arr <- function(x) {
  structure(paste0("[", paste(fmt_num(x), collapse = ", "), "]"), class = "json")
}

# JSON scalar number (NA -> null)
num <- function(x) {
  stopifnot(length(x) == 1)
  structure(fmt_num(x), class = "json")
}

# named numeric vector -> JSON object {name: number}
named_nums <- function(x, nms = names(x)) {
  stopifnot(length(x) == length(nms))
  out <- lapply(seq_along(x), function(i) num(x[[i]]))
  names(out) <- nms
  out
}

# numeric matrix -> list of row arrays
mat_rows <- function(m) {
  m <- as.matrix(m)
  lapply(seq_len(nrow(m)), function(i) arr(m[i, ]))
}

# character vector that must stay a JSON array
str_arr <- function(x) I(as.character(x))

# NULL-like value for JSON
json_null <- NA

chisq_test <- function(stat, df) {
  list(stat = num(stat), df = num(df),
       p = num(pchisq(stat, df, lower.tail = FALSE)))
}

# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

read_data <- function(name) {
  read.csv(file.path(data_dir, paste0(name, ".csv")), check.names = FALSE,
           stringsAsFactors = FALSE, na.strings = "")
}

mgus2_out <- survival::mgus2
mgus2_out$sex <- as.character(mgus2_out$sex)
mgus2_out$etime <- with(mgus2_out, ifelse(pstat == 0, futime, ptime))
mgus2_out$event <- with(mgus2_out, ifelse(pstat == 0, 2 * death, pstat))
write.csv(mgus2_out, file.path(data_dir, "mgus2.csv"), row.names = FALSE, na = "")

datasets <- list(
  lung = read_data("lung"),
  gbsg2 = read_data("gbsg2"),
  rossi = read_data("rossi"),
  waltons = read_data("waltons"),
  mgus2 = read_data("mgus2")
)
stopifnot("ph.ecog" %in% names(datasets$lung))
stopifnot(nrow(datasets$mgus2) == nrow(survival::mgus2))

# ---------------------------------------------------------------------------
# Kaplan-Meier
# ---------------------------------------------------------------------------

conf_types <- c("log", "log-log", "plain")
probs <- c(0.25, 0.5, 0.75)
prob_keys <- c("0.25", "0.5", "0.75")

km_group <- function(d, time, event) {
  y <- Surv(d[[time]], d[[event]])
  fits <- lapply(conf_types, function(ct) survfit(y ~ 1, conf.type = ct))
  names(fits) <- conf_types
  f <- fits[["log"]]
  ci <- lapply(conf_types, function(ct) {
    fc <- fits[[ct]]
    stopifnot(identical(fc$time, f$time), identical(fc$surv, f$surv))
    q <- quantile(fc, probs = probs)
    qs <- lapply(seq_along(probs), function(i) arr(c(q$quantile[i], q$lower[i], q$upper[i])))
    names(qs) <- prob_keys
    list(lower = arr(fc$lower), upper = arr(fc$upper), quantiles = qs)
  })
  names(ci) <- conf_types
  list(
    n = num(f$n),
    time = arr(f$time),
    n_risk = arr(f$n.risk),
    n_event = arr(f$n.event),
    n_censor = arr(f$n.censor),
    surv = arr(f$surv),
    std_err = arr(f$surv * f$std.err),
    cumhaz = arr(f$cumhaz),
    std_chaz = arr(f$std.chaz),
    ci = ci
  )
}

km_case <- function(dataset, time, event, by = NULL, levels = NULL) {
  d <- datasets[[dataset]]
  if (is.null(by)) {
    groups <- list(all = km_group(d, time, event))
  } else {
    stopifnot(setequal(as.character(unique(d[[by]])), levels))
    groups <- lapply(levels, function(lv) km_group(d[as.character(d[[by]]) == lv, ], time, event))
    names(groups) <- levels
  }
  list(dataset = dataset, time = time, event = event,
       by = if (is.null(by)) json_null else by, groups = groups)
}

km <- list(
  km_lung_all = km_case("lung", "time", "status"),
  km_lung_sex = km_case("lung", "time", "status", "sex", c("1", "2")),
  km_gbsg2_horTh = km_case("gbsg2", "time", "cens", "horTh", c("no", "yes")),
  km_rossi_fin = km_case("rossi", "week", "arrest", "fin", c("0", "1")),
  km_waltons_group = km_case("waltons", "T", "E", "group", c("control", "miR-137")),
  km_mgus2_sex = km_case("mgus2", "futime", "death", "sex", c("F", "M"))
)

# ---------------------------------------------------------------------------
# log-rank / Harrington-Fleming (survdiff)
# ---------------------------------------------------------------------------

lr_case <- function(dataset, time, event, group, levels, strata = NULL, rho = 0) {
  d <- datasets[[dataset]]
  stopifnot(setequal(as.character(unique(d[[group]])), levels))
  dd <- data.frame(time = d[[time]], event = d[[event]],
                   grp = factor(as.character(d[[group]]), levels = levels))
  if (is.null(strata)) {
    fit <- survdiff(Surv(time, event) ~ grp, data = dd, rho = rho)
  } else {
    dd$strat <- d[[strata]]
    fit <- survdiff(Surv(time, event) ~ grp + strata(strat), data = dd, rho = rho)
  }
  obs <- if (is.matrix(fit$obs)) rowSums(fit$obs) else fit$obs
  expct <- if (is.matrix(fit$exp)) rowSums(fit$exp) else fit$exp
  stopifnot(length(obs) == length(levels), length(expct) == length(levels))
  df <- length(levels) - 1
  list(
    dataset = dataset, time = time, event = event, group = group,
    levels = str_arr(levels),
    strata = if (is.null(strata)) json_null else strata,
    rho = num(rho),
    n = named_nums(as.vector(fit$n), levels),
    chisq = num(fit$chisq), df = num(df),
    p = num(pchisq(fit$chisq, df, lower.tail = FALSE)),
    observed = named_nums(obs, levels),
    expected = named_nums(expct, levels),
    var = mat_rows(fit$var)
  )
}

tg <- c("I", "II", "III")
logrank <- list(
  lr_lung_sex_rho0 = lr_case("lung", "time", "status", "sex", c("1", "2"), rho = 0),
  lr_lung_sex_rho1 = lr_case("lung", "time", "status", "sex", c("1", "2"), rho = 1),
  lr_gbsg2_tgrade_rho0 = lr_case("gbsg2", "time", "cens", "tgrade", tg, rho = 0),
  lr_gbsg2_tgrade_rho1 = lr_case("gbsg2", "time", "cens", "tgrade", tg, rho = 1),
  lr_gbsg2_horTh_strata_menostat = lr_case("gbsg2", "time", "cens", "horTh", c("no", "yes"),
                                           strata = "menostat", rho = 0),
  lr_rossi_fin_strata_race_rho05 = lr_case("rossi", "week", "arrest", "fin", c("0", "1"),
                                           strata = "race", rho = 0.5),
  lr_waltons_group = lr_case("waltons", "T", "E", "group", c("control", "miR-137"), rho = 0)
)

# ---------------------------------------------------------------------------
# cumulative incidence (Aalen-Johansen via survfit, and cmprsk::cuminc)
# ---------------------------------------------------------------------------

causes <- c("1", "2")

cif_group <- function(d, time, event) {
  ev <- factor(d[[event]], levels = 0:2)
  y <- Surv(d[[time]], ev)
  f <- survfit(y ~ 1)
  stopifnot(identical(f$states, c("(s0)", "1", "2")))
  per_cause <- function(m) {
    out <- lapply(causes, function(k) arr(m[, k]))
    names(out) <- causes
    out
  }
  colnames(f$pstate) <- f$states
  colnames(f$std.err) <- f$states
  colnames(f$n.event) <- f$states
  ci <- cuminc(d[[time]], d[[event]], cencode = 0)
  ci <- ci[names(ci) != "Tests"]
  cause_of <- sub("^.* ", "", names(ci))
  stopifnot(setequal(cause_of, causes))
  cum <- lapply(causes, function(k) {
    comp <- ci[[which(cause_of == k)]]
    list(time = arr(comp$time), est = arr(comp$est), var = arr(comp$var))
  })
  names(cum) <- causes
  list(
    n = num(f$n),
    time = arr(f$time),
    n_risk = arr(f$n.risk[, 1]),
    n_event = per_cause(f$n.event),
    n_censor = arr(f$n.censor),
    cif = per_cause(f$pstate),
    std_err = per_cause(f$std.err),
    cuminc = cum
  )
}

cif_case <- function(dataset, time, event, by = NULL, levels = NULL) {
  d <- datasets[[dataset]]
  if (is.null(by)) {
    groups <- list(all = cif_group(d, time, event))
  } else {
    stopifnot(setequal(as.character(unique(d[[by]])), levels))
    groups <- lapply(levels, function(lv) cif_group(d[as.character(d[[by]]) == lv, ], time, event))
    names(groups) <- levels
  }
  list(dataset = dataset, time = time, event = event, causes = str_arr(causes),
       by = if (is.null(by)) json_null else by, groups = groups)
}

cif <- list(
  cif_mgus2_all = cif_case("mgus2", "etime", "event"),
  cif_mgus2_sex = cif_case("mgus2", "etime", "event", "sex", c("F", "M"))
)

# ---------------------------------------------------------------------------
# Cox proportional hazards
# ---------------------------------------------------------------------------

numeric_cov <- function(name) list(name = name, type = "numeric")
cat_cov <- function(name, levels) {
  list(name = name, type = "categorical", levels = levels, reference = levels[1])
}

cox_case <- function(dataset, time, event, covariates, ties, strata = NULL) {
  d <- datasets[[dataset]]
  cols <- c(time, event, vapply(covariates, `[[`, "", "name"), strata)
  dd <- d[, cols, drop = FALSE]
  for (cv in covariates) {
    if (cv$type == "categorical") {
      stopifnot(all(is.na(dd[[cv$name]]) | as.character(dd[[cv$name]]) %in% cv$levels))
      dd[[cv$name]] <- factor(as.character(dd[[cv$name]]), levels = cv$levels)
    }
  }
  n_all <- nrow(dd)
  dd <- dd[complete.cases(dd), , drop = FALSE]
  rhs <- paste(sprintf("`%s`", vapply(covariates, `[[`, "", "name")), collapse = " + ")
  if (!is.null(strata)) rhs <- paste0(rhs, sprintf(" + strata(`%s`)", strata))
  fml <- as.formula(sprintf("Surv(`%s`, `%s`) ~ %s", time, event, rhs))
  # coxph.control warns that toler.chol (default eps^0.75 ~ 1.8e-12) is not
  # below eps = 1e-12; toler.chol only governs singularity detection, so that
  # one warning is muffled.  Any other warning is turned into an error.
  fit <- withCallingHandlers(
    coxph(fml, data = dd, ties = ties,
          control = coxph.control(eps = 1e-12, iter.max = 100)),
    warning = function(w) {
      if (grepl("tolerance should be < eps", conditionMessage(w), fixed = TRUE)) {
        invokeRestart("muffleWarning")
      } else {
        stop("coxph warning in ", dataset, "/", ties, ": ", conditionMessage(w))
      }
    }
  )
  stopifnot(fit$iter < 100)
  stopifnot(fit$n == nrow(dd))

  # map R coefficient names (e.g. "tgradeII") to "tgrade[II]" explicitly
  r_names <- character(0)
  our_names <- character(0)
  for (cv in covariates) {
    if (cv$type == "numeric") {
      r_names <- c(r_names, cv$name)
      our_names <- c(our_names, cv$name)
    } else {
      lv <- cv$levels[-1]
      r_names <- c(r_names, paste0(cv$name, lv))
      our_names <- c(our_names, sprintf("%s[%s]", cv$name, lv))
    }
  }
  stopifnot(setequal(names(coef(fit)), r_names), length(coef(fit)) == length(r_names))
  idx <- match(r_names, names(coef(fit)))
  b <- unname(coef(fit))[idx]
  v <- unname(fit$var)[idx, idx, drop = FALSE]
  se <- sqrt(diag(v))
  z <- b / se
  p <- 2 * pnorm(-abs(z))
  k <- length(b)

  covs <- lapply(covariates, function(cv) {
    if (cv$type == "categorical") cv$levels <- str_arr(cv$levels)
    cv
  })

  list(
    dataset = dataset, time = time, event = event, ties = ties,
    covariates = covs,
    strata = if (is.null(strata)) json_null else strata,
    n = num(fit$n), n_dropped = num(n_all - fit$n), nevent = num(fit$nevent),
    coef_names = str_arr(our_names),
    coef = named_nums(b, our_names),
    se = named_nums(se, our_names),
    z = named_nums(z, our_names),
    p = named_nums(p, our_names),
    vcov = mat_rows(v),
    loglik = arr(fit$loglik),
    score_test = chisq_test(unname(fit$score), k),
    wald_test = chisq_test(unname(fit$wald.test), k),
    lr_test = chisq_test(2 * diff(fit$loglik), k),
    iterations = num(fit$iter)
  )
}

lung_cov <- list(numeric_cov("age"), numeric_cov("sex"), numeric_cov("ph.ecog"))
rossi_cov <- lapply(c("fin", "age", "race", "wexp", "mar", "paro", "prio"), numeric_cov)
gbsg2_cov <- c(
  lapply(c("age", "tsize", "pnodes", "progrec", "estrec"), numeric_cov),
  list(cat_cov("horTh", c("no", "yes")), cat_cov("tgrade", c("I", "II", "III")))
)
waltons_cov <- list(cat_cov("group", c("control", "miR-137")))
mgus2_cov <- list(numeric_cov("age"), cat_cov("sex", c("F", "M")), numeric_cov("hgb"),
                  numeric_cov("creat"), numeric_cov("mspike"))

cox <- list(
  cox_lung_efron = cox_case("lung", "time", "status", lung_cov, "efron"),
  cox_lung_breslow = cox_case("lung", "time", "status", lung_cov, "breslow"),
  cox_rossi_efron = cox_case("rossi", "week", "arrest", rossi_cov, "efron"),
  cox_rossi_breslow = cox_case("rossi", "week", "arrest", rossi_cov, "breslow"),
  cox_gbsg2_efron = cox_case("gbsg2", "time", "cens", gbsg2_cov, "efron"),
  cox_gbsg2_breslow = cox_case("gbsg2", "time", "cens", gbsg2_cov, "breslow"),
  cox_gbsg2_strata_efron = cox_case("gbsg2", "time", "cens", gbsg2_cov, "efron",
                                    strata = "menostat"),
  cox_waltons_efron = cox_case("waltons", "T", "E", waltons_cov, "efron"),
  cox_mgus2_efron = cox_case("mgus2", "futime", "death", mgus2_cov, "efron")
)

# ---------------------------------------------------------------------------
# write
# ---------------------------------------------------------------------------

golden <- list(
  meta = list(
    generator = "tests/golden/make_golden.R",
    r_version = R.version.string,
    survival_version = as.character(packageVersion("survival")),
    cmprsk_version = as.character(packageVersion("cmprsk")),
    jsonlite_version = as.character(packageVersion("jsonlite")),
    number_format = if (force17) "%.17g" else "shortest round-trip (<= 17 significant digits)",
    conf_int = num(0.95)
  ),
  km = km,
  logrank = logrank,
  cif = cif,
  cox = cox
)

out_file <- Sys.getenv("GOLDEN_OUT", out_path)
write_json(golden, out_file, digits = NA, na = "null", auto_unbox = TRUE, pretty = TRUE,
           json_verbatim = TRUE)
cat("wrote", out_file, "\n")
